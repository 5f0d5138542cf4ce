"""Is the mini model's hearing, or its decoder, what keeps spoken questions apart so little?

The build's stage "words" pulls every audio token (40 ms) onto the input embedding of the
text token spoken there. This script asks what the decoder would make of spoken questions
if that had worked perfectly: it replaces each spoken audio token by exactly that
embedding (eSpeak NG's own word timings say which token is spoken when; silent audio
tokens keep what the encoder made of them) and compares it with the real audio tokens,
on the same prompts and clips, without retraining anything:

  heard        the real audio tokens (encoder + projector), as the model runs
  perfect      each spoken audio token replaced by the input embedding of its text token
  perfect_F%   the same for a seeded random F% of the spoken words only (--fractions; the
               other words stay as heard): how much better must the hearing get?

Per input mode and view it prints, for the test split: the ROC AUC of P("I") (harmful vs
benign), the test AUC of a linear probe on h(x) (the last position's final state) fitted
on the training split, and the share of questions whose first greedy token is "I" (the
refusal decision of the vanilla model). Usage (prints a table; nothing is written):

    RRS_DATA_DIR=../shared/data .venv/bin/python scripts/hearing_oracle.py [--model PATH] [--profile mini] \
        [--fractions 0.25,0.5,0.75]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rrs import stages  # noqa: E402
from rrs.mini.behaviour import speech_with_word_timings  # noqa: E402
from rrs.mini.build import encode_audio  # noqa: E402
from rrs.mini.speech import audio_token_words, frame_token_labels  # noqa: E402
from rrs.modes import build_input  # noqa: E402


def perfect_audio_tokens(audio: torch.Tensor, labels: np.ndarray, embeddings: torch.Tensor,
                         where: np.ndarray | None = None) -> torch.Tensor:
    """The audio tokens [n, d] with every spoken one (label >= 0; and `where`, if given)
    replaced by the input embedding of the text token spoken there; the rest (silence,
    label -100) stay as they are."""
    out = audio.clone()
    sel = (labels >= 0) if where is None else (labels >= 0) & where
    out[torch.from_numpy(sel)] = embeddings[torch.from_numpy(labels[sel])].to(out.dtype)
    return out


def views(fractions) -> dict[str, float]:
    """view name -> share of the spoken words made perfect (0: as heard, 1: all)."""
    return {"heard": 0.0, **{f"perfect_{round(100 * f)}%": f for f in fractions}, "perfect": 1.0}


@torch.no_grad()
def decoder_outputs(adapter, rows: pd.DataFrame, clips: dict, mode: str, seed: int,
                    fractions=()) -> dict[str, tuple]:
    """view -> (h(x) [N, d], P("I") [N], first token is "I" [N]) for each question of `rows`;
    clips: id -> (waveform, word timings) (rrs.mini.behaviour.speech_with_word_timings)."""
    model, tok = adapter.model, adapter.processor.tokenizer
    embeddings = model.get_input_embeddings().weight
    audio_id, refusal_id = model.config.audio_token_id, adapter.refusal_token_id()
    shares = views(fractions)
    out = {v: ([], [], []) for v in shares}
    for i, r in enumerate(tqdm(list(rows.itertuples(index=False)), desc=mode, leave=False)):
        wav, timing = clips[r.id]
        batch = adapter.prepare([build_input(r.text, wav, mode)])
        ids = batch["input_ids"]
        heard = encode_audio(model, batch["input_features"].to(model.dtype), batch["feature_attention_mask"])
        duration_ms = 10.0 * int(batch["feature_attention_mask"].sum())
        labels = frame_token_labels(r.text, timing, heard.shape[0], tok, duration_ms=duration_ms)
        word, _ = audio_token_words(timing, heard.shape[0], duration_ms)
        # one seeded order of the words per question: perfect_F% makes its first F% perfect,
        # so a larger F keeps every word a smaller one made perfect
        order = np.random.default_rng([seed, i]).permutation(len(timing))
        rank = np.full(heard.shape[0], len(timing))
        rank[word >= 0] = np.argsort(order)[word[word >= 0]]
        for view, share in shares.items():
            where = None if share == 1 else rank < round(share * len(timing))
            audio = heard if share == 0 else perfect_audio_tokens(heard, labels, embeddings, where=where)
            emb = embeddings[ids].clone()
            emb[ids == audio_id] = audio.to(emb.dtype)
            h = model.model.language_model(inputs_embeds=emb, attention_mask=batch["attention_mask"],
                                           use_cache=False).last_hidden_state[0, -1]
            logits = model.lm_head(h).float()
            out[view][0].append(h.float().numpy())
            out[view][1].append(torch.softmax(logits, -1)[refusal_id].item())
            out[view][2].append(bool(logits.argmax() == refusal_id))
    return {v: (np.stack(h), np.array(p), np.array(i)) for v, (h, p, i) in out.items()}


def oracle_table(adapter, train: pd.DataFrame, test: pd.DataFrame, profile, modes, seed: int = 0,
                 fractions=()) -> pd.DataFrame:
    y_train, y_test = (train.label == "harmful").to_numpy(), (test.label == "harmful").to_numpy()
    # each question is spoken once and serves every mode
    clips_train = speech_with_word_timings(train, profile, seed)
    clips_test = speech_with_word_timings(test, profile, seed)
    rows = []
    for mode in modes:
        o_train = decoder_outputs(adapter, train, clips_train, mode, seed, fractions)
        o_test = decoder_outputs(adapter, test, clips_test, mode, seed, fractions)
        for view in views(fractions):
            (h_train, _, _), (h_test, p_test, first_i) = o_train[view], o_test[view]
            probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.1)).fit(h_train, y_train)
            rows.append({"mode": mode, "view": view,
                         "pI_auc": roc_auc_score(y_test, p_test),
                         "probe_auc": roc_auc_score(y_test, probe.decision_function(h_test)),
                         "I_harmful": 100.0 * first_i[y_test].mean(), "I_benign": 100.0 * first_i[~y_test].mean()})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    stages.add_setup_arguments(ap)
    ap.add_argument("--model", default=None, help="model id or folder (default: the profile's)")
    ap.add_argument("--modes", default="audio-only,audio-text", help="comma-separated spoken modes")
    ap.add_argument("--fractions", default="", help="comma-separated shares of the spoken words made "
                    "perfect in extra views, e.g. 0.25,0.5,0.75")
    args = ap.parse_args(argv)
    fractions = [float(f) for f in args.fractions.split(",") if f.strip()]
    if any(not 0 < f < 1 for f in fractions):
        raise SystemExit(f"--fractions must lie strictly between 0 and 1, got {args.fractions!r}")

    P, adapter, questions = stages.setup(args.profile, args.seed, model=args.model, progress=False)
    train, test = stages.train_questions(questions), stages.split_questions(questions, "test")
    table = oracle_table(adapter, train, test, P, args.modes.split(","), args.seed, fractions)
    print(f"model {args.model or P.default_model}; probe fitted on {len(train)} train, scored on {len(test)} test "
          f"questions; I_harmful / I_benign: % of test questions whose first token is \"I\"")
    print(table.round({"pI_auc": 3, "probe_auc": 3, "I_harmful": 1, "I_benign": 1}).to_string(index=False))


if __name__ == "__main__":
    main()
