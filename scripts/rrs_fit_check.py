"""Can RRS fit its own training questions, and does what it learns carry over to the test split?

RRS trains LoRA so that h(x) of spoken harmful training questions moves to h0(x) + δ and
that of spoken benign ones to h0(b) − δ. This script trains RRS with a chosen budget (epochs,
learning rate, LoRA rank, weight of the LoRA penalty Σ‖s·B·A‖²) through the same stages as
notebook 04, then reports, for the training split and the test split in every input mode:

  p_I harmful / benign   mean first-token probability of "I", vanilla -> RRS
  AUC                    ROC AUC of p_I for harmful vs benign, vanilla -> RRS (0.5: no separation)
  I-first harmful/benign share of questions whose p_I exceeds 0.5 after RRS

and the mean representation loss (MSE) per epoch. A method that separates the training split
but not the test split has memorised its training clips rather than learned what makes a
question harmful. Two options widen the training data to see whether more of it helps: `--views N`
adds N more clips (other voices and rates) of every spoken training question, `--synthetic N` adds
N spoken questions of the mini build's own synthetic corpus (never a held-out question); such a
run trains in a temporary folder that is removed at the end, or in `--out DIR`. Usage (prints;
otherwise writes only checkpoints and representations to the cache):

    RRS_DATA_DIR=../shared/data .venv/bin/python scripts/rrs_fit_check.py --epochs 15 [--penalty-weight 0]
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import sys
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rrs import audio, stages  # noqa: E402
from rrs.data import normalise_text  # noqa: E402
from rrs.mini.corpus import decontaminate, synthetic_questions  # noqa: E402
from rrs.modes import MODES  # noqa: E402
from rrs.profiles import get_profile  # noqa: E402


def extra_views(items: pd.DataFrame, P, n: int) -> pd.DataFrame:
    """`n` more rows per spoken item, each the same question in another (voice, rate) of the
    profile (in a seeded order per question); clips that do not fit the window are skipped."""
    combos = [(v, r) for v in P.tts.voices for r in P.tts.rates]
    rows = []
    for row in items.itertuples(index=False):
        if getattr(row, "modality", "audio") != "audio":
            continue
        others = sorted((c for c in combos if c != (row.voice, int(row.rate))),
                        key=lambda c: hashlib.sha256(f"{row.id}|{c}".encode()).hexdigest())
        added = 0
        for voice, rate in others:
            if added == n:
                break
            path = audio.cached_speech(row.text, voice, rate)
            if len(audio.load_audio(path)) / audio.SAMPLE_RATE <= P.max_audio_seconds:
                rows.append(row._replace(voice=voice, rate=rate, audio_path=str(path)))
                added += 1
    return pd.DataFrame(rows, columns=items.columns)


def synthetic_items(questions: pd.DataFrame, P, n: int, seed: int = 0) -> pd.DataFrame:
    """`n` spoken questions drawn (seeded) from the mini build's own synthetic corpus
    (rrs.mini.corpus, word lists and templates), none equal to a question outside the training
    split, as training items of the columns of `stages.training_items`; clips over the window
    are left out."""
    held_out = set(questions.loc[questions["split"] != "train", "text"].map(normalise_text))
    pool, _ = decontaminate(synthetic_questions(seed), held_out)
    picked = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))[:n]]
    rows = pd.DataFrame({"id": [f"synthetic_{i:05d}" for i in range(len(picked))],
                         "text": [q.text for q in picked], "label": [q.label for q in picked],
                         "source": [q.source for q in picked], "split": "train"})
    rows = audio.speak_questions(rows, voices=P.tts.voices, rates=P.tts.rates,
                                 max_seconds=P.max_audio_seconds, seed=seed, progress=False)
    rows = rows[rows["fits_window"]].assign(modality="audio").reset_index(drop=True)
    return rows.reindex(columns=stages.training_items(questions, "mirror", seed).columns, fill_value="")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    stages.add_setup_arguments(ap)
    ap.add_argument("--model", default=None, help="model id or folder (default: the profile's)")
    ap.add_argument("--paper-settings", action="store_true",
                    help="train with the paper profile's settings (r 16, alpha 4, dropout 0.1, 10 epochs, lr 5e-5 "
                         "decaying linearly, batch 4 x 2, prompts drawn per batch) in float32 instead of the "
                         "profile's; the options below still override")
    ap.add_argument("--epochs", type=int, default=None, help="default: the profile's")
    ap.add_argument("--lr", type=float, default=None, help="default: the profile's")
    ap.add_argument("--rank", type=int, default=None, help="LoRA r (alpha keeps the profile's alpha/r)")
    ap.add_argument("--penalty-weight", type=float, default=None,
                    help="weight of the LoRA penalty in the RRS loss (the paper's: 1)")
    ap.add_argument("--views", type=int, default=0,
                    help="extra clips (other voice x rate) of every spoken training question")
    ap.add_argument("--synthetic", type=int, default=0,
                    help="add this many spoken questions of the mini build's synthetic corpus to the training items")
    ap.add_argument("--out", default=None,
                    help="folder for the checkpoints of a --views / --synthetic run (default: a temporary "
                         "folder, removed at the end)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rrs-fit-check-") as scratch:
        # never touch the committed figures/ and tables/: this script only reads and caches
        outputs = {"RRS_OUTPUT_ROOT": os.environ.get("RRS_OUTPUT_ROOT") or str(Path(scratch) / "outputs")}
        with mock.patch.dict(os.environ, outputs):
            run(args, Path(args.out) if args.out else Path(scratch) / "rrs")


def run(args, run_dir: Path) -> None:
    P, adapter, questions = stages.setup(args.profile, args.seed, model=args.model, progress=False)
    train_cfg = get_profile("paper").train if args.paper_settings else P.train
    if args.rank is not None:
        train_cfg = dataclasses.replace(train_cfg, lora_r=args.rank,
                                        lora_alpha=round(train_cfg.lora_alpha * args.rank / train_cfg.lora_r, 6))
    for field, value in (("epochs", args.epochs), ("lr", args.lr), ("penalty_weight", args.penalty_weight)):
        if value is not None:
            train_cfg = dataclasses.replace(train_cfg, **{field: value})
    P = dataclasses.replace(P, train=train_cfg)
    print(f"RRS on {args.model or P.default_model}: epochs {train_cfg.epochs}, lr {train_cfg.lr:g}, "
          f"r {train_cfg.lora_r}, alpha {train_cfg.lora_alpha:g}, dropout {train_cfg.lora_dropout:g}, "
          f"batch {train_cfg.batch_size} x {train_cfg.grad_accum}, penalty weight {train_cfg.penalty_weight:g}, "
          f"lr schedule {train_cfg.lr_schedule}, prompts {train_cfg.prompt_sampling}",
          flush=True)

    if args.views or args.synthetic:
        from rrs.training import detach_lora, load_trained, train_rrs

        items = stages.training_items(questions, "mirror", args.seed)
        parts = [extra_views(items, P, args.views)] if args.views else []
        parts += [synthetic_items(questions, P, args.synthetic, args.seed)] if args.synthetic else []
        more = pd.concat(parts, ignore_index=True)
        print(f"training items: {len(items)} + {len(more)} extra (--views {args.views}, --synthetic {args.synthetic})",
              flush=True)
        train_rrs(adapter, pd.concat([items, more], ignore_index=True),
                  stages.safety_features(adapter, questions, P, args.seed, progress=False), P.train, run_dir,
                  args.seed, extract_batch_size=P.eval_batch_size, progress=False)
        detach_lora(adapter)
        checkpoint = run_dir / f"epoch_{train_cfg.epochs}"
        model = load_trained(adapter, checkpoint)
    else:
        checkpoint = stages.method_checkpoint(adapter, questions, P, args.seed, "rrs")
        model = stages.load_method(adapter, questions, P, args.seed, "rrs")
    print(f"checkpoint: {checkpoint}")
    log = pd.DataFrame(stages.training_log(checkpoint))
    print("mean MSE per epoch:", " ".join(f"{e}:{m:.3f}" for e, m in log.groupby("epoch").mse.mean().items()))
    # the whole training set, scored before the first step and after each epoch (train_rrs
    # records it in both branches above)
    print("training-set MSE (harmful / benign) per epoch, 0 = vanilla:", " ".join(
        f"{r['epoch']}:{r['mse']:.3f} ({r['mse_harmful']:.3f} / {r['mse_benign']:.3f})"
        for r in stages.epoch_mse(checkpoint)))

    rows = []
    for split, table in (("train", stages.train_questions(questions)), ("test", stages.split_questions(questions))):
        harmful = (table.label == "harmful").to_numpy()
        for mode in MODES:
            p0 = stages.refusal_token_probs(adapter, stages.representations(adapter, table, mode, progress=False))
            p1 = stages.refusal_token_probs(adapter, stages.representations(adapter, table, mode, model=model,
                                                                            progress=False), model=model)
            p0, p1 = p0.numpy(), p1.numpy()
            rows.append({"split": split, "mode": mode, "n": len(table),
                         "p_I harmful": f"{p0[harmful].mean():.3f} -> {p1[harmful].mean():.3f}",
                         "p_I benign": f"{p0[~harmful].mean():.3f} -> {p1[~harmful].mean():.3f}",
                         "AUC": f"{roc_auc_score(harmful, p0):.3f} -> {roc_auc_score(harmful, p1):.3f}",
                         "I-first harmful": round(float(np.mean(p1[harmful] > 0.5)), 3),
                         "I-first benign": round(float(np.mean(p1[~harmful] > 0.5)), 3)})
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
