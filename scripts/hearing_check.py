"""How well does the mini model hear? Transcription and word recognition, train vs test split.

RRS can only separate spoken harmful questions from their benign twins as far as the model
hears the words that differ, and those are content words ("hurt" / "help"). This script
speaks a sample of questions of each split (the pipeline's voice and rate for each
question, eSpeak NG with word timings) and reports:

  WER            word error rate of the model's transcription ("Transcribe the audio.",
                 greedy), i.e. what the decoder makes of the audio tokens
  frequent_acc   share of audio tokens (40 ms) spoken during one of the 50 most frequent words
                 of the written training questions ("how", "i", "my", ...) whose projected
                 embedding points most nearly toward the input embedding of the token spoken
                 there (cosine: each decoder layer reads its input through an RMSNorm, so the
                 direction is what counts)
  other_acc      the same for every other word (the content words)

frequent_acc and other_acc look at what the encoder and projector hand to the decoder,
before the decoder reads it; the targets are those of the build's stage "words"
(rrs.mini.speech.frame_token_labels). Train-split questions were spoken in the build (as
transcription), test-split ones never. Usage (prints a table; nothing is written):

    RRS_DATA_DIR=../shared/data .venv/bin/python scripts/hearing_check.py [--n 150] [--model PATH]
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rrs import stages  # noqa: E402
from rrs.audio import pick_voice  # noqa: E402
from rrs.data import normalise_text  # noqa: E402
from rrs.mini.behaviour import transcription  # noqa: E402
from rrs.mini.build import encode_audio  # noqa: E402
from rrs.mini.speech import frame_token_labels, synthesize_words  # noqa: E402


def frequent_words(texts, k: int = 50) -> set[str]:
    """The k most frequent words of `texts` (normalised; ties broken by the word)."""
    counts = Counter(w for t in texts for w in normalise_text(t).split())
    return {w for w, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0]))[:k]}


@torch.no_grad()
def frame_accuracy(adapter, rows: pd.DataFrame, clips: dict, frequent: set[str]) -> dict:
    """Nearest-embedding (cosine) accuracy of the projected audio tokens, frequent words vs others:
    {"frequent": (correct, frames), "other": (correct, frames)}."""
    model, proc = adapter.model, adapter.processor
    tok = proc.tokenizer
    emb = torch.nn.functional.normalize(model.get_input_embeddings().weight.detach().float(), dim=-1)
    out = {"frequent": [0, 0], "other": [0, 0]}
    for r in rows.itertuples(index=False):
        wav, timing = clips[r.id]
        fe = proc.feature_extractor(wav, sampling_rate=16_000, return_attention_mask=True,
                                    padding="max_length", return_tensors="pt")
        audio = encode_audio(model, fe["input_features"].to(model.dtype), fe["attention_mask"]).float()
        labels = frame_token_labels(r.text, timing, audio.shape[0], tok,
                                    duration_ms=10.0 * int(fe["attention_mask"].sum()))
        nearest = (torch.nn.functional.normalize(audio, dim=-1) @ emb.T).argmax(-1).numpy()
        for f in np.flatnonzero(labels >= 0):
            word = tok.decode([int(labels[f])]).strip().lower()
            key = "frequent" if word in frequent else "other"
            out[key][0] += int(nearest[f] == labels[f])
            out[key][1] += 1
    return {k: tuple(v) for k, v in out.items()}


def hearing_table(adapter, questions: pd.DataFrame, P, n: int, seed: int = 0) -> pd.DataFrame:
    frequent = frequent_words(stages.train_questions(questions)["text"])
    rows = []
    for split in ("train", "test"):
        part = questions[questions["split"] == split]
        part = part.iloc[np.random.default_rng(seed).permutation(len(part))[:n]].reset_index(drop=True)
        clips = {r.id: synthesize_words(r.text, *pick_voice(r.id, P.tts.voices, P.tts.rates, seed))
                 for r in part.itertuples(index=False)}
        tr = transcription(adapter, part, {k: w for k, (w, _) in clips.items()})
        acc = frame_accuracy(adapter, part, clips, frequent)
        rows.append({"split": split, "questions": len(part),
                     "WER": round(100.0 * tr["errors"].sum() / max(1, tr["words"].sum()), 1),
                     "frequent_acc": round(100.0 * acc["frequent"][0] / max(1, acc["frequent"][1]), 1),
                     "frequent_frames": acc["frequent"][1],
                     "other_acc": round(100.0 * acc["other"][0] / max(1, acc["other"][1]), 1),
                     "other_frames": acc["other"][1]})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="mini")
    ap.add_argument("--model", default=None, help="model id or folder (default: the profile's)")
    ap.add_argument("--n", type=int, default=150, help="questions per split (default 150)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    P, adapter, questions = stages.setup(args.profile, args.seed, model=args.model, progress=False)
    print(f"model: {adapter.model_id}; {args.n} questions per split; 50 most frequent training words")
    print(hearing_table(adapter, questions, P, args.n, args.seed).to_string(index=False))


if __name__ == "__main__":
    main()
