"""How many words must a model recognise to tell the paper's harmful questions from benign ones?

RRS needs spoken harmful and benign questions to be told apart in the model's states, so
the model has to hear the words that make the difference. This script measures how many
words that takes, from the text alone. It fits a bag-of-words logistic regression on the
training split (binary word presence) and scores it on the test split (ROC AUC: 0.5 means
no information). The vocabulary is limited to K words, chosen in two ways:

  frequent  the K most frequent words of the training split
  salient   the K words with the largest weights in a fit on the full training vocabulary
            (the best K keywords in hindsight, chosen on the training split only)

It also prints how many distinct words the training split has and how many test-split
words the training vocabulary covers. Usage (prints a table; nothing is written):

    RRS_DATA_DIR=../shared/data .venv/bin/python scripts/vocabulary_need.py [--sizes 25,100,400,2000] [--seed 0]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rrs import data  # noqa: E402
from rrs.profiles import get_profile  # noqa: E402

WORD = r"(?u)\b\w+\b"
# the words of a text exactly as the probe's vectorizer sees them (lower-cased WORD matches)
words = CountVectorizer(token_pattern=WORD).build_analyzer()


def probe_auc(train: pd.DataFrame, test: pd.DataFrame, vocabulary) -> float:
    vec = CountVectorizer(vocabulary=vocabulary, binary=True, token_pattern=WORD)
    clf = LogisticRegression(C=1.0, max_iter=5000)
    clf.fit(vec.transform(train.text), train.label == "harmful")
    return float(roc_auc_score(test.label == "harmful", clf.decision_function(vec.transform(test.text))))


def vocabulary_table(train: pd.DataFrame, test: pd.DataFrame, sizes) -> pd.DataFrame:
    """Test ROC AUC of the bag-of-words probe for each vocabulary size and choice."""
    if train.label.nunique() < 2 or test.label.nunique() < 2:
        raise ValueError("both splits need harmful and benign questions")
    full = CountVectorizer(binary=True, token_pattern=WORD)
    present = full.fit_transform(train.text)
    counts = np.asarray(present.sum(0)).ravel()
    names = full.get_feature_names_out()
    # ties broken by the word itself, so the table does not depend on dictionary order
    frequent = [names[i] for i in sorted(range(len(names)), key=lambda i: (-counts[i], names[i]))]
    weights = LogisticRegression(C=1.0, max_iter=5000).fit(present, train.label == "harmful").coef_[0]
    salient = [names[i] for i in sorted(range(len(names)), key=lambda i: (-abs(weights[i]), names[i]))]
    rows = []
    for k in sorted({min(int(k), len(names)) for k in sizes}):
        rows.append({"words": k, "frequent": probe_auc(train, test, frequent[:k]),
                     "salient": probe_auc(train, test, salient[:k])})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="mini",
                    help="the profile whose test fraction splits the pairs (default mini)")
    ap.add_argument("--seed", type=int, default=0, help="the split seed (default 0)")
    ap.add_argument("--sizes", default="25,50,100,200,400,800,1600,3200",
                    help="comma-separated vocabulary sizes K")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        raise SystemExit(f"--sizes must be positive integers, got {args.sizes!r}")

    P = get_profile(args.profile)
    df = data.load_questions(test_fraction=P.test_fraction, seed=args.seed)
    train, test = df[df.split == "train"], df[df.split == "test"]
    vocab = {w for t in train.text for w in words(t)}
    test_words = [w for t in test.text for w in words(t)]
    print(f"paper pairs, split seed {args.seed}: {len(train)} train / {len(test)} test questions; "
          f"{len(vocab)} distinct training words; training vocabulary covers "
          f"{100 * np.mean([w in vocab for w in test_words]):.1f}% of the {len(test_words)} test-split words")
    print("bag-of-words probe fitted on train, harmful-vs-benign ROC AUC on test, by vocabulary size:")
    print(vocabulary_table(train, test, sizes).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
