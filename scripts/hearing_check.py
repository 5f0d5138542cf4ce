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
(rrs.mini.speech.frame_token_labels; the logic is rrs.mini.behaviour.hearing_table, which
notebook 00 also shows). Train-split questions were spoken in the build (as
transcription), test-split ones never. Usage (prints a table; nothing is written):

    RRS_DATA_DIR=../shared/data .venv/bin/python scripts/hearing_check.py [--n 150] [--model PATH]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rrs import stages  # noqa: E402
from rrs.mini.behaviour import hearing_table  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    stages.add_setup_arguments(ap)
    ap.add_argument("--model", default=None, help="model id or folder (default: the profile's)")
    ap.add_argument("--n", type=int, default=150, help="questions per split (default 150)")
    args = ap.parse_args(argv)
    P, adapter, questions = stages.setup(args.profile, args.seed, model=args.model, progress=False)
    print(f"model: {adapter.model_id}; {args.n} questions per split; 50 most frequent training words")
    print(hearing_table(adapter, questions, P, args.n, args.seed).to_string(index=False))


if __name__ == "__main__":
    main()
