"""Would RRS meet issue 5's bar if the mini model heard perfectly?

scripts/hearing_oracle.py shows that the vanilla decoder separates perfectly heard spoken
questions about as well as written ones. This script asks what RRS itself makes of that. For
each view of the spoken questions:

  heard    the real audio tokens (encoder + projector), as the model runs: the control,
           which should land near Table 1's RRS row
  perfect  each spoken audio token replaced by the input embedding of the text token spoken
           there (hearing_oracle.perfect_audio_tokens; eSpeak NG's word timings)

it runs the method on that view with the profile's settings: δ from the view's h0_ref and h0
(training split, audio-text, H0 prompt; docs/method.md steps 1-5), targets h0 ± δ, and LoRA
trained by rrs.training.train_rrs on the view's decoder inputs (Mirror items, audio-text).
Every epoch's adapter then reads the test split in the three modes (evaluation prompt), and
the script prints, as scripts/tradeoff_ceiling.py does, the P("I") AUC, the greedy refusal
change against the view's vanilla model and the best harmful refusal gain that any threshold
could reach for a given rise in benign refusals; and which benign questions the spoken modes
refuse: how many of them the vanilla model also refuses when they are written.

Each question is spoken once, in this process, with the pipeline's voice and rate for its id
(rrs.mini.behaviour.speech_with_word_timings), and serves both spoken modes. Training writes
to a temporary folder; nothing is cached or kept. Usage (prints tables):

    RRS_DATA_DIR=../shared/data .venv/bin/python scripts/perfect_hearing_rrs.py [--model DIR] [--views heard,perfect] \
        [--epochs 3]
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hearing_oracle import perfect_audio_tokens  # noqa: E402
from tradeoff_ceiling import first_token_scores, print_tradeoff  # noqa: E402

from rrs import stages, training  # noqa: E402
from rrs.features import SafetyFeatures, rrs_targets  # noqa: E402
from rrs.mini.behaviour import speech_with_word_timings  # noqa: E402
from rrs.mini.speech import frame_token_labels  # noqa: E402
from rrs.modes import H0_PROMPT, MODES, build_input  # noqa: E402

VIEWS = ("heard", "perfect")


def _wave_key(audio) -> str:
    return hashlib.sha1(np.asarray(audio, dtype=np.float32).tobytes()).hexdigest()


@torch.no_grad()
def view_decoder_inputs(adapter, inputs, view: str, spoken: dict, batch_size: int = 16,
                        desc: str = "decoder inputs") -> list[dict]:
    """adapter.decoder_inputs of `inputs` (rrs ModelInputs), with the audio tokens of `view`.
    spoken: waveform key (_wave_key) -> (question text, word timings) of every clip."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; choose from {VIEWS}")
    embeddings = adapter.model.get_input_embeddings().weight.detach().cpu()
    audio_id = adapter.model.config.audio_token_id
    out = []
    for s in tqdm(range(0, len(inputs), batch_size), desc=desc, leave=False, unit="batch"):
        chunk = inputs[s:s + batch_size]
        batch = adapter.prepare(chunk)
        rows = adapter.decoder_inputs(batch)
        clip = 0  # the batch's audio features hold the clips of the inputs that have one, in order
        for i, (inp, row) in enumerate(zip(chunk, rows)):
            if inp.audio is None:
                out.append(row)
                continue
            ids = batch["input_ids"][i][batch["attention_mask"][i].bool()]
            if len(ids) != row["inputs_embeds"].shape[0]:
                raise RuntimeError("the decoder's inputs do not align with the prompt's tokens")
            where = (ids == audio_id).cpu()
            if view == "perfect":
                text, timing = spoken[_wave_key(inp.audio)]
                heard = row["inputs_embeds"][where]
                duration_ms = 10.0 * int(batch["feature_attention_mask"][clip].sum())
                labels = frame_token_labels(text, timing, heard.shape[0], adapter.tokenizer, duration_ms=duration_ms)
                row["inputs_embeds"][where] = perfect_audio_tokens(heard, labels, embeddings)
            clip += 1
            out.append(row)
    return out


@torch.no_grad()
def last_states(adapter, rows: list[dict], model=None, batch_size: int = 32) -> torch.Tensor:
    """h(x) [N, H] of decoder-input rows, with `model` (a peft model) or the vanilla decoder."""
    model = adapter.model if model is None else model
    model.eval()
    return torch.cat([adapter.decoder_states(adapter.collate_decoder_inputs(rows[s:s + batch_size]), model)[:, -1]
                      .float().cpu() for s in range(0, len(rows), batch_size)])


def run_view(adapter, P, questions, clips: dict, view: str, seed: int = 0, epochs: int | None = None) -> dict:
    """{mode: {"vanilla" | "epoch_N": (P("I"), greedy refusal)}} on the test split, for RRS
    trained on `view`; clips: question id -> (waveform, word timings)."""
    train, test = stages.train_questions(questions), stages.split_questions(questions, "test")
    spoken = {_wave_key(clips[r.id][0]): (r.text, clips[r.id][1]) for df in (train, test)
              for r in df.itertuples(index=False)}

    def inputs(df, mode, **kw):
        return [build_input(t, clips[i][0], mode, **kw) for i, t in zip(df.id, df.text)]

    # δ of this view (docs/method.md steps 1-5, as stages.safety_features reads it)
    harmful, benign = train[train.label == "harmful"], train[train.label == "benign"]
    h_ref = last_states(adapter, view_decoder_inputs(adapter, inputs(harmful, "audio-text", prompt=H0_PROMPT,
                                                                     refusal=True), view, spoken, desc="h0_ref"))
    h_ben = last_states(adapter, view_decoder_inputs(adapter, inputs(benign, "audio-text", prompt=H0_PROMPT),
                                                     view, spoken, desc="h0 benign"))
    features = SafetyFeatures.compute(h_ref, h_ben, adapter.refusal_token_row(), model_id=adapter.model_id)

    items = stages.training_items(questions, "mirror", seed).copy()
    items["audio"] = [clips[i][0] for i in items.id]
    examples = training.training_examples(items, ("audio-text",), seed)
    train_rows = view_decoder_inputs(adapter, [e.train_input for e in examples], view, spoken, desc="x̃")
    h0 = last_states(adapter, view_decoder_inputs(adapter, [e.h0_input for e in examples], view, spoken, desc="h0"))
    label = np.array([e.label for e in examples])

    test_rows = {mode: view_decoder_inputs(adapter, inputs(test, mode), view, spoken, desc=f"test {mode}")
                 for mode in MODES}
    scores = {mode: {"vanilla": first_token_scores(adapter, last_states(adapter, test_rows[mode]))} for mode in MODES}

    # the pipeline's own training loop; only where it reads its decoder inputs and h0 changes
    replaced = set()

    def decoder_inputs(adapter_, make_batch, n, *args, **kwargs):
        if n != len(train_rows):
            raise RuntimeError(f"train_rrs made {n} examples, this view read {len(train_rows)}")
        replaced.add("decoder inputs")
        return train_rows

    def targets(adapter_, harmful_h0_inputs, benign_h0_inputs, delta, **kwargs):
        replaced.add("targets")
        return rrs_targets(h0[label == "harmful"], h0[label == "benign"], delta)

    with tempfile.TemporaryDirectory() as out:
        try:
            with mock.patch.object(training, "cached_decoder_inputs", decoder_inputs), \
                    mock.patch.object(training, "compute_targets", targets):
                run = training.train_rrs(adapter, items, features, P.train, out, seed, epochs=epochs,
                                         record_mse=False, extract_batch_size=P.eval_batch_size)
            if replaced != {"decoder inputs", "targets"}:
                raise RuntimeError("rrs.training.train_rrs no longer reads its decoder inputs and targets "
                                   "through the functions this script replaces")
            for checkpoint in run.checkpoints:
                model = training.load_trained(adapter, checkpoint, features)
                for mode in MODES:
                    scores[mode][checkpoint.name] = first_token_scores(
                        adapter, last_states(adapter, test_rows[mode], model), model)
        finally:
            training.detach_lora(adapter)
    return scores


def refused_as_text(scores: dict, harmful: np.ndarray) -> dict:
    """{(spoken mode, method): (benign questions refused, how many of them the vanilla model
    refuses when they are written)}, from {mode: {method: (P("I"), greedy refusal)}}."""
    written = np.asarray(scores["text-only"]["vanilla"][1], dtype=bool) & ~harmful
    counts = {}
    for mode in ("audio-text", "audio-only"):
        for method, (_, greedy) in scores[mode].items():
            refused = np.asarray(greedy, dtype=bool) & ~harmful
            counts[mode, method] = (int(refused.sum()), int((refused & written).sum()))
    return counts


def print_tradeoff_and_mean(scores: dict, harmful: np.ndarray, budgets) -> None:
    """tradeoff_ceiling's table, and each method's greedy benign refusal change averaged over
    the three modes (issue 5: at most 3)."""
    benign_change = {}
    for rows in print_tradeoff(scores, harmful, budgets).values():
        for row in rows:
            benign_change.setdefault(row["method"], []).append(row["greedy_benign"])
    print("greedy benign refusal change, mean of the modes: "
          + ", ".join(f"{m} {np.mean(v):+.2f}" for m, v in benign_change.items()))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    stages.add_setup_arguments(ap)
    ap.add_argument("--model", default=None, help="a mini model folder (default: the profile's); the "
                    "perfect view needs a model whose tokenizer spells eSpeak NG's words, as every mini build's does")
    ap.add_argument("--views", default=",".join(VIEWS),
                    help="comma-separated views of the spoken questions (default: both)")
    ap.add_argument("--epochs", type=int, default=None, help="RRS epochs (default: the profile's)")
    ap.add_argument("--budgets", default="3,4.5,9", help="benign refusal rises allowed, in points")
    args = ap.parse_args(argv)
    views = args.views.split(",")
    if not views or set(views) - set(VIEWS):
        raise SystemExit(f"--views takes {', '.join(VIEWS)}; got {args.views!r}")
    budgets = [float(b) for b in args.budgets.split(",")]

    P, adapter, questions = stages.setup(args.profile, args.seed, model=args.model)
    torch.manual_seed(args.seed)
    train, test = stages.train_questions(questions), stages.split_questions(questions, "test")
    clips = speech_with_word_timings(train, P, args.seed) | speech_with_word_timings(test, P, args.seed)
    harmful = (test.label == "harmful").to_numpy()
    for view in views:
        scores = run_view(adapter, P, questions, clips, view, args.seed, args.epochs)
        print(f"\nview {view}; {P.name}, seed {args.seed}, {adapter.model_id}; test split {harmful.sum()} harmful / "
              f"{(~harmful).sum()} benign; evaluation prompt; greedy and best: refusal change against this view's "
              "vanilla model, points")
        print_tradeoff_and_mean(scores, harmful, budgets)
        _, written = scores["text-only"]["vanilla"]
        answered = harmful | ~np.asarray(written, dtype=bool)
        print(f"the same, on the {int((answered & ~harmful).sum())} benign questions that the vanilla model answers "
              "as text (and every harmful one):")
        print_tradeoff_and_mean({mode: {m: (np.asarray(p)[answered], np.asarray(g)[answered])
                                        for m, (p, g) in by_method.items()}
                                 for mode, by_method in scores.items()}, harmful[answered], budgets)
        print(f"vanilla, written: refuses {100 * np.mean(written[harmful]):.1f}% of harmful and "
              f"{100 * np.mean(written[~harmful]):.1f}% ({int(written[~harmful].sum())}) of benign questions")
        for (mode, method), (n, as_text) in refused_as_text(scores, harmful).items():
            print(f"benign refused {mode:10s} {method:8s} {n:4d}, of which refused as text {as_text:4d}")


if __name__ == "__main__":
    main()
