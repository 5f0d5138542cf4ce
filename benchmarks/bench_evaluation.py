"""Throughput of the evaluation: speech synthesis, greedy generation per mode and batch size,
first-token probabilities, and the refusal judge.

What an evaluation run spends its time on, so that a run on another model or machine can be
planned: `rrs.audio.speak` (eSpeak NG in its helper process, no cache), `adapter.generate`
(batched greedy answers, left padding) and `adapter.first_token_probs` (one forward pass) in
each input mode, and `PhraseJudge.judge`. The questions are benign templates spoken by eSpeak NG,
the same for every batch size. Usage:

    .venv/bin/python benchmarks/bench_evaluation.py                 # mini-lalm, else a tiny random Qwen2-Audio
    .venv/bin/python benchmarks/bench_evaluation.py --model /path/to/hf_folder --device cuda --dtype bfloat16
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_training import load  # noqa: E402  (the same model choice as the training benchmark)

from rrs.audio import speak  # noqa: E402
from rrs.evaluation import PhraseJudge  # noqa: E402
from rrs.modes import MODES, build_input  # noqa: E402

TOPICS = ["grow tomatoes on a balcony", "bake bread without yeast", "learn to swim as an adult",
          "fix a squeaky door", "plan a trip to the mountains", "keep a cat entertained",
          "start running in the morning", "clean a cast iron pan"]


def questions(n: int) -> list[str]:
    return [f"How can I {TOPICS[i % len(TOPICS)]} in week {i // len(TOPICS) + 1}?" for i in range(n)]


def timed(fn, sync) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model id or folder (default: mini-lalm, else a tiny random one)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--n", type=int, default=64, help="questions per mode and batch size")
    ap.add_argument("--batch-sizes", default="1,16,64")
    ap.add_argument("--max-new-tokens", type=int, default=24, help="the mini profile's answer length")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error(f"--n must be >= 1 (got {args.n})")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if not batch_sizes or min(batch_sizes) < 1:
        ap.error(f"--batch-sizes must be positive integers (got {args.batch_sizes!r})")
    if args.threads:
        torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    texts = questions(args.n)
    speak(texts[0])  # starts eSpeak NG's helper process
    t0 = time.perf_counter()
    clips = [speak(t) for t in texts]
    speech_s = time.perf_counter() - t0
    audio_s = sum(len(c) for c in clips) / 16_000
    print(f"speech: {args.n / speech_s:.1f} clips/s ({1000 * speech_s / args.n:.1f} ms a clip, "
          f"{audio_s / args.n:.2f} s of audio on average)")

    adapter = load(args.model, args.device, args.dtype)
    print(f"model {adapter.model_id} on {args.device} ({args.dtype}), {args.n} questions, answers of at most "
          f"{args.max_new_tokens} tokens, torch threads {torch.get_num_threads()}")
    rows = []
    for mode in MODES:
        inputs = [build_input(t, None if mode == "text-only" else c, mode) for t, c in zip(texts, clips)]
        adapter.generate(inputs[:2], max_new_tokens=args.max_new_tokens, batch_size=2, progress=False)  # warm-up
        for bs in batch_sizes:
            generate_s = timed(lambda: adapter.generate(inputs, max_new_tokens=args.max_new_tokens,
                                                        batch_size=bs, progress=False), sync)
            probs_s = timed(lambda: adapter.first_token_probs(inputs, batch_size=bs), sync)
            rows.append({"mode": mode, "batch": bs,
                         "generate q/s": args.n / generate_s, "generate ms/q": 1000 * generate_s / args.n,
                         "p(I) q/s": args.n / probs_s, "p(I) ms/q": 1000 * probs_s / args.n})
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda x: f"{x:.1f}"))

    judge = PhraseJudge()
    answers = [f"Sure, here is how to {TOPICS[i % len(TOPICS)]}." if i % 2 else "I cannot help with that."
               for i in range(10_000)]
    asked = questions(len(answers))  # built before the clock starts: only the judging is timed
    judge_s = timed(lambda: judge.judge(asked, answers), lambda: None)
    print(f"judge {judge.name} {judge.version}: {len(answers) / judge_s:,.0f} responses/s")


if __name__ == "__main__":
    main()
