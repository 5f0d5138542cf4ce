"""Time per optimiser step of RRS vs refusal SFT, and batched vs one-by-one extraction.

Each training method is timed twice: with the whole model in every step, and as
rrs.training runs it, the decoder alone on decoder inputs read once per example
(LALMAdapter.decoder_inputs; the one-time read is timed too).

Both training methods run on the same model, the same LoRA settings, the same batch size
and the same sequences (synthetic questions with synthetic audio), so the ratios compare
the methods, not the data. Usage:

    .venv/bin/python benchmarks/bench_training.py                 # mini-lalm, else a tiny random Qwen2-Audio
    .venv/bin/python benchmarks/bench_training.py --model /path/to/hf_folder --device cuda --dtype bfloat16
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rrs.models.base import MINI_MODEL_DIR, load_adapter  # noqa: E402
from rrs.profiles import TrainConfig  # noqa: E402
from rrs.training import (REFUSAL_TEMPLATE, attach_lora, cached_decoder_inputs, compute_targets,  # noqa: E402
                          detach_lora, lora_config, lora_penalty, response_cross_entropy, rrs_loss, sft_loss,
                          training_attention, training_examples)


def synthetic_items(n: int, seconds: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16_000)) / 16_000
    rows = []
    for i in range(n):
        wav = sum(0.1 * np.sin(2 * np.pi * f * t) for f in rng.uniform(100, 800, 3)).astype(np.float32)
        rows.append({"id": f"q{i}", "text": f"How can I do thing number {i} at home?",
                     "label": "harmful" if i % 2 == 0 else "benign", "audio": wav})
    return pd.DataFrame(rows)


def load(model: str | None, device: str, dtype: str):
    if model:
        return load_adapter(model, device=device, dtype=dtype)
    if (MINI_MODEL_DIR / "config.json").is_file():
        return load_adapter("mini-lalm", device=device, dtype=dtype)
    from rrs.models.qwen2_audio import Qwen2AudioAdapter, random_tiny_qwen2_audio

    print("mini-lalm not built yet: using a tiny random Qwen2-Audio")
    model, processor = random_tiny_qwen2_audio(seed=0, window_seconds=4, hidden_size=64, num_layers=2)
    return Qwen2AudioAdapter(model.to(device, getattr(torch, dtype)), processor, model_id="tiny-random-qwen2-audio",
                             device=device, dtype=dtype)


def time_steps(step, batches, sync) -> list[float]:
    step(batches[0])  # warm-up
    times = []
    for idx in batches:
        sync()
        t0 = time.perf_counter()
        step(idx)
        sync()
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model id or folder (default: mini-lalm, else a tiny random one)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6, help="timed optimiser steps per method")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each synthetic clip")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    adapter = load(args.model, args.device, args.dtype)
    bs = args.batch_size
    items = synthetic_items(bs * args.steps, args.seconds)
    examples = training_examples(items)
    batches = [list(range(i, i + bs)) for i in range(0, len(examples), bs)]
    cfg = TrainConfig(lora_r=8, lora_alpha=16, lora_dropout=0.0, lr=1e-4, batch_size=bs, grad_accum=1)
    print(f"model {adapter.model_id} on {args.device} ({args.dtype}), batch {bs}, {len(batches)} timed steps, "
          f"{args.seconds:.1f} s clips, torch threads {torch.get_num_threads()}")

    # RRS: fixed targets (read once, not timed), then MSE + LoRA penalty per step
    peft_model = attach_lora(adapter, lora_config(cfg, adapter.lora_target_pattern), seed=0)
    targets, _ = compute_targets(adapter, [e.h0_input for e in examples], [], torch.zeros(adapter.hidden_size),
                                 progress=False)
    targets = targets.to(adapter.device)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=cfg.lr)
    peft_model.train()

    def rrs_step(idx):
        opt.zero_grad(set_to_none=True)
        batch = adapter.prepare([examples[i].train_input for i in idx])
        with training_attention():  # the kernels rrs.training trains with
            loss, _, _ = rrs_loss(adapter.last_hidden(batch, model=peft_model), targets[idx], lora_penalty(peft_model))
            loss.backward()
        opt.step()

    sync(); t0 = time.perf_counter()
    rrs_cache = cached_decoder_inputs(adapter, lambda idx: adapter.prepare([examples[i].train_input for i in idx]),
                                      len(examples), bs, progress=False)
    sync(); read_s = time.perf_counter() - t0

    def rrs_cached_step(idx):
        opt.zero_grad(set_to_none=True)
        inputs = adapter.collate_decoder_inputs([rrs_cache[i] for i in idx])
        with training_attention():
            h = adapter.decoder_states(inputs, peft_model)[:, -1]
            loss, _, _ = rrs_loss(h, targets[idx], lora_penalty(peft_model))
            loss.backward()
        opt.step()

    rrs_times = time_steps(rrs_step, batches, sync)
    rrs_cached_times = time_steps(rrs_cached_step, batches, sync) if rrs_cache is not None else None

    # refusal SFT: same examples, same LoRA and optimiser, CE on the refusal tokens
    peft_model = attach_lora(adapter, lora_config(cfg, adapter.lora_target_pattern), seed=0)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=cfg.lr)
    peft_model.train()

    def sft_batch(idx):
        return adapter.sft_batch([examples[i].train_input for i in idx], [REFUSAL_TEMPLATE] * len(idx))

    def sft_step(idx):
        opt.zero_grad(set_to_none=True)
        with training_attention():
            sft_loss(adapter, sft_batch(idx), peft_model).backward()
        opt.step()

    sft_cache = cached_decoder_inputs(adapter, sft_batch, len(examples), bs, progress=False)

    def sft_cached_step(idx):
        opt.zero_grad(set_to_none=True)
        inputs = adapter.collate_decoder_inputs([sft_cache[i] for i in idx])
        with training_attention():
            states = adapter.decoder_states(inputs, peft_model)
            response_cross_entropy(adapter, peft_model, states, inputs["labels"]).backward()
        opt.step()

    sft_times = time_steps(sft_step, batches, sync)
    sft_cached_times = time_steps(sft_cached_step, batches, sync) if sft_cache is not None else None
    detach_lora(adapter)

    # extraction: the same inputs batched vs one by one
    inputs = [e.h0_input for e in examples]
    adapter.hidden_states(inputs[:bs], batch_size=bs, progress=False)  # warm-up
    sync(); t0 = time.perf_counter()
    adapter.hidden_states(inputs, batch_size=bs, progress=False)
    sync(); batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    adapter.hidden_states(inputs, batch_size=1, progress=False)
    sync(); single = time.perf_counter() - t0

    rrs_ms, sft_ms = 1000 * statistics.median(rrs_times), 1000 * statistics.median(sft_times)
    print(f"whole model in every step (medians of {len(rrs_times)}):")
    print(f"  RRS step          {rrs_ms:8.1f} ms")
    print(f"  refusal-SFT step  {sft_ms:8.1f} ms")
    print(f"  ratio RRS / SFT   {rrs_ms / sft_ms:8.2f}")
    if rrs_cached_times is not None:
        rrs_c, sft_c = 1000 * statistics.median(rrs_cached_times), 1000 * statistics.median(sft_cached_times)
        print(f"decoder only, on decoder inputs read once ({1000 * read_s / len(examples):.1f} ms per example, "
              f"as rrs.training runs):")
        print(f"  RRS step          {rrs_c:8.1f} ms ({rrs_ms / rrs_c:.2f}x faster)")
        print(f"  refusal-SFT step  {sft_c:8.1f} ms ({sft_ms / sft_c:.2f}x faster)")
        print(f"  ratio RRS / SFT   {rrs_c / sft_c:8.2f}")
    else:
        print(f"{adapter.model_id} does not cache decoder inputs: training runs the whole model per step")
    print(f"extraction      {len(inputs) / batched:8.1f} items/s batched (batch {bs}), "
          f"{len(inputs) / single:.1f} items/s one by one; speed-up {single / batched:.2f}x")


if __name__ == "__main__":
    main()
