"""Where does the mini model lose the harmful/benign distinction of spoken questions?

RRS teaches LoRA to move spoken harmful questions toward refusal and spoken benign ones
away from it, so it can only work if the model's states tell the two apart. This script
fits a linear probe (standardised logistic regression) on the training split and scores
it on the test split (ROC AUC; 0.5 = no information), for several views of one input:

  audio_tokens_in   mean of the audio-token embeddings the decoder receives (encoder + projector)
  audio_tokens_out  mean of the decoder's last-layer states over the audio tokens
  all_tokens_out    mean of the last-layer states over every real token
  h_layerK          the state at the last input position after decoder layer K (K = 0: embeddings;
                    the last K is h(x), the representation RRS reshapes)

in audio-only and text-only mode (text-only has no audio tokens: those rows read 0.5).
Usage (prints a table; nothing is written):

    RRS_DATA_DIR=../shared/data .venv/bin/python scripts/speech_probe.py [--model PATH] [--profile mini]
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
from rrs.modes import H0_PROMPT  # noqa: E402
from rrs.representations import question_inputs  # noqa: E402


@torch.no_grad()
def views(adapter, rows: pd.DataFrame, mode: str, batch_size: int) -> dict[str, np.ndarray]:
    audio_id = adapter.model.config.audio_token_id
    inputs = question_inputs(rows, mode, prompt=H0_PROMPT)
    out: dict[str, list] = {}
    for s in tqdm(range(0, len(inputs), batch_size), desc=f"{mode} states", leave=False):
        batch = adapter.prepare(inputs[s:s + batch_size])
        outputs = adapter.model(**adapter.forward_kwargs(batch), output_hidden_states=True, use_cache=False)
        states = outputs.hidden_states
        audio = (batch["input_ids"] == audio_id).unsqueeze(-1).float()
        real = batch["attention_mask"].unsqueeze(-1).float()
        parts = {"audio_tokens_in": (states[0] * audio).sum(1) / audio.sum(1).clamp(min=1),
                 "audio_tokens_out": (states[-1] * audio).sum(1) / audio.sum(1).clamp(min=1),
                 "all_tokens_out": (states[-1] * real).sum(1) / real.sum(1)}
        parts.update({f"h_layer{k}": h[:, -1] for k, h in enumerate(states)})
        for k, v in parts.items():
            out.setdefault(k, []).append(v.float().cpu())
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    stages.add_setup_arguments(ap)
    ap.add_argument("--model", default=None, help="model id or folder (default: the profile's)")
    ap.add_argument("--batch-size", type=int, default=32, help="questions per forward pass (default 32)")
    args = ap.parse_args(argv)

    P, adapter, questions = stages.setup(args.profile, args.seed, model=args.model, progress=False)
    train, test = stages.train_questions(questions), stages.split_questions(questions, "test")
    y_train, y_test = (train.label == "harmful").to_numpy(), (test.label == "harmful").to_numpy()
    rows = []
    for mode in ("audio-only", "text-only"):
        v_train, v_test = views(adapter, train, mode, args.batch_size), views(adapter, test, mode, args.batch_size)
        for view in v_train:
            probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.1))
            probe.fit(v_train[view], y_train)
            rows.append({"mode": mode, "view": view,
                         "train_auc": roc_auc_score(y_train, probe.decision_function(v_train[view])),
                         "test_auc": roc_auc_score(y_test, probe.decision_function(v_test[view]))})
    table = pd.DataFrame(rows)
    print(f"model {args.model or P.default_model}; probe fitted on {len(train)} train, scored on {len(test)} test "
          f"questions (harmful vs benign ROC AUC)")
    print(table.pivot(index="view", columns="mode", values=["train_auc", "test_auc"]).round(3)
          .reindex(list(dict.fromkeys(table.view))).to_string())


if __name__ == "__main__":
    main()
