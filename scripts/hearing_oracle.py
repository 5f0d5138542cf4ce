"""Is the mini model's hearing, or its decoder, what keeps spoken questions apart so little?

The build's stage "words" pulls every audio token (40 ms) onto the input embedding of the
text token spoken there. This script asks what the decoder would make of spoken questions
if that had worked perfectly: it replaces each spoken audio token by exactly that
embedding (eSpeak NG's own word timings say which token is spoken when; silent audio
tokens keep what the encoder made of them) and compares it with the real audio tokens,
on the same prompts and clips, without retraining anything:

  heard     the real audio tokens (encoder + projector), as the model runs
  perfect   each spoken audio token replaced by the input embedding of its text token

Per input mode and view it prints, for the test split: the ROC AUC of P("I") (harmful vs
benign), the test AUC of a linear probe on h(x) (the last position's final state) fitted
on the training split, and the share of questions whose first greedy token is "I" (the
refusal decision of the vanilla model). Usage (prints a table; nothing is written):

    RRS_DATA_DIR=../shared/data .venv/bin/python scripts/hearing_oracle.py [--model PATH] [--profile mini]
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
from rrs.audio import pick_voice  # noqa: E402
from rrs.mini.build import encode_audio  # noqa: E402
from rrs.mini.speech import frame_token_labels, synthesize_words  # noqa: E402
from rrs.modes import build_input  # noqa: E402

VIEWS = ("heard", "perfect")


def perfect_audio_tokens(audio: torch.Tensor, labels: np.ndarray, embeddings: torch.Tensor) -> torch.Tensor:
    """The audio tokens [n, d] with every spoken one (label >= 0) replaced by the input
    embedding of the text token spoken there; silent ones (label -100) stay as they are."""
    out = audio.clone()
    spoken = torch.from_numpy(labels) >= 0
    out[spoken] = embeddings[torch.from_numpy(labels[labels >= 0])].to(out.dtype)
    return out


@torch.no_grad()
def decoder_outputs(adapter, rows: pd.DataFrame, mode: str, profile, seed: int) -> dict[str, tuple]:
    """view -> (h(x) [N, d], P("I") [N], first token is "I" [N]) for each question of `rows`."""
    model, tok = adapter.model, adapter.processor.tokenizer
    embeddings = model.get_input_embeddings().weight
    audio_id, refusal_id = model.config.audio_token_id, adapter.refusal_token_id()
    out = {v: ([], [], []) for v in VIEWS}
    for r in tqdm(list(rows.itertuples(index=False)), desc=mode, leave=False):
        wav, timing = synthesize_words(r.text, *pick_voice(r.id, profile.tts.voices, profile.tts.rates, seed))
        batch = adapter.prepare([build_input(r.text, wav, mode)])
        ids = batch["input_ids"]
        heard = encode_audio(model, batch["input_features"].to(model.dtype), batch["feature_attention_mask"])
        labels = frame_token_labels(r.text, timing, heard.shape[0], tok,
                                    duration_ms=10.0 * int(batch["feature_attention_mask"].sum()))
        for view, audio in (("heard", heard), ("perfect", perfect_audio_tokens(heard, labels, embeddings))):
            emb = embeddings[ids].clone()
            emb[ids == audio_id] = audio.to(emb.dtype)
            h = model.model.language_model(inputs_embeds=emb, attention_mask=batch["attention_mask"],
                                           use_cache=False).last_hidden_state[0, -1]
            logits = model.lm_head(h).float()
            out[view][0].append(h.float().numpy())
            out[view][1].append(torch.softmax(logits, -1)[refusal_id].item())
            out[view][2].append(bool(logits.argmax() == refusal_id))
    return {v: (np.stack(h), np.array(p), np.array(i)) for v, (h, p, i) in out.items()}


def oracle_table(adapter, train: pd.DataFrame, test: pd.DataFrame, profile, modes, seed: int = 0) -> pd.DataFrame:
    y_train, y_test = (train.label == "harmful").to_numpy(), (test.label == "harmful").to_numpy()
    rows = []
    for mode in modes:
        o_train = decoder_outputs(adapter, train, mode, profile, seed)
        o_test = decoder_outputs(adapter, test, mode, profile, seed)
        for view in VIEWS:
            (h_train, _, _), (h_test, p_test, first_i) = o_train[view], o_test[view]
            probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.1)).fit(h_train, y_train)
            rows.append({"mode": mode, "view": view,
                         "pI_auc": roc_auc_score(y_test, p_test),
                         "probe_auc": roc_auc_score(y_test, probe.decision_function(h_test)),
                         "I_harmful": 100.0 * first_i[y_test].mean(), "I_benign": 100.0 * first_i[~y_test].mean()})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="mini")
    ap.add_argument("--model", default=None, help="model id or folder (default: the profile's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modes", default="audio-only,audio-text")
    args = ap.parse_args(argv)

    P, adapter, questions = stages.setup(args.profile, args.seed, model=args.model, progress=False)
    train, test = stages.train_questions(questions), stages.split_questions(questions, "test")
    table = oracle_table(adapter, train, test, P, args.modes.split(","), args.seed)
    print(f"model {args.model or P.default_model}; probe fitted on {len(train)} train, scored on {len(test)} test "
          f"questions; I_harmful / I_benign: % of test questions whose first token is \"I\"")
    print(table.round({"pI_auc": 3, "probe_auc": 3, "I_harmful": 1, "I_benign": 1}).to_string(index=False))


if __name__ == "__main__":
    main()
