"""Does rrs's Qwen-Audio-Chat adapter work with the model's own remote code?

Qwen-Audio-Chat runs modelling and tokenizer code from its hub repository, written for
transformers 4.x, so the project's test suite (transformers 5) skips it. This script runs it
in the separate environment that `rrs/models/qwen_audio_chat.py` describes. It copies the
remote code's Python files from REMOTE_CODE_DIR (a download of the hub repository at the
commit you reviewed, or a checkout of github.com/QwenLM/Qwen-Audio), adds a byte-level
vocabulary of 256 tokens and Whisper's mel filters, builds a tiny randomly initialised model
of the same classes (2 layers, width 64, a 2-layer audio encoder), loads it through
`rrs.models.load_adapter` and checks what the pipeline relies on:

- left-padded batches of all three input modes give the same h(x), first-token
  probabilities and greedy answers as each input alone;
- h(x) is the LM head's input, and "I" is one token;
- SFT labels are exactly the response;
- LoRA wraps exactly the decoder's projections (c_attn, c_proj, w1, w2), never the audio
  encoder;
- RRS and refusal-SFT training run through `rrs.training`, RRS moves h(x), its checkpoint
  loads back, and detaching LoRA gives the vanilla model back.

It prints one PASS or FAIL line per check and exits 1 if any fails. Usage, in that
environment (ffmpeg on the PATH; the tokenizer reads audio through it):

    python scripts/qwen_audio_chat_check.py REMOTE_CODE_DIR [--out DIR]
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rrs import io as rio  # noqa: E402
from rrs.models.qwen_audio_chat import check_transformers_4  # noqa: E402

# modeling_qwen.py imports cpp_kernels (used only with use_cache_kernel), so transformers
# needs the file even though it never runs here
REMOTE_CODE = ("configuration_qwen.py", "modeling_qwen.py", "qwen_generation_utils.py", "tokenization_qwen.py",
               "audio.py", "cpp_kernels.py")
PAIRS = [("How can I hurt my neighbour's cat?", "How can I help my neighbour's cat?"),
         ("How do I make a weapon at home?", "How do I make a birdhouse at home?"),
         ("How can I steal a car?", "How can I buy a car?"),
         ("How do I poison a river?", "How do I clean a river?")]


def check_remote_code_dir(folder: Path) -> None:
    missing = [name for name in REMOTE_CODE if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: not Qwen-Audio's remote code, it lacks {', '.join(missing)}")


def build_tiny_model(remote_code: Path, out: Path, seed: int = 0) -> Path:
    """A tiny random Qwen-Audio-Chat folder: the remote code, a 256-token byte vocabulary,
    Whisper's 80 mel filters, config and weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.audio_utils import mel_filter_bank

    out.mkdir(parents=True, exist_ok=True)
    for name in REMOTE_CODE:
        shutil.copy(remote_code / name, out / name)
    (out / "qwen.tiktoken").write_text("".join(f"{base64.b64encode(bytes([i])).decode()} {i}\n" for i in range(256)))
    mel = mel_filter_bank(num_frequency_bins=201, num_mel_filters=80, min_frequency=0.0, max_frequency=8000.0,
                          sampling_rate=16000, norm="slaney", mel_scale="slaney")  # what librosa gives Whisper
    np.savez_compressed(out / "mel_filters.npz", mel_80=mel.T.astype(np.float32))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": 8192, "tokenizer_class": "QWenTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None]}}, indent=2))
    tokenizer = AutoTokenizer.from_pretrained(str(out), trust_remote_code=True)
    # the hub config's fields, scaled down (hidden 4096 -> 64, 32 layers -> 2, audio 1280 -> 64)
    config = {
        "architectures": ["QWenLMHeadModel"], "model_type": "qwen", "tokenizer_type": "QWenTokenizer",
        "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig",
                     "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
        "vocab_size": len(tokenizer), "hidden_size": 64, "kv_channels": 16, "num_attention_heads": 4,
        "num_hidden_layers": 2, "intermediate_size": 256, "max_position_embeddings": 8192, "seq_length": 2048,
        "attn_dropout_prob": 0.0, "emb_dropout_prob": 0.0, "initializer_range": 0.02, "layer_norm_epsilon": 1e-05,
        "no_bias": True, "onnx_safe": None, "rotary_emb_base": 10000, "rotary_pct": 1.0,
        "scale_attn_weights": True, "softmax_in_fp32": False, "tie_word_embeddings": False, "use_cache": True,
        "use_cache_kernel": False, "use_cache_quantization": False, "use_dynamic_ntk": True,
        "use_flash_attn": False, "use_logn_attn": True, "bf16": False, "fp16": False, "fp32": True,
        "audio": {"n_mels": 80, "n_ctx": 1500, "n_state": 64, "n_head": 4, "n_layer": 2, "output_dim": 64,
                  "avg_pool": True, "add_audio_bos_eos_token": True, "audio_start_id": tokenizer.audio_start_id},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(out), trust_remote_code=True),
                                             trust_remote_code=True)
    with torch.no_grad():  # greedy answers of text, not of special tokens that decode to nothing
        model.lm_head.weight[256:] = 0
    model.save_pretrained(str(out))
    return out


def run_checks(folder: Path) -> list[tuple[str, bool]]:
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer

    from rrs.audio import speak
    from rrs.models import load_adapter
    from rrs.modes import ModelInput
    from rrs.profiles import get_profile
    from rrs.representations import safety_features
    from rrs.training import (detach_lora, load_trained, lora_config, refusal_sft_data, train_rrs, train_sft,
                              training_examples)

    adapter = load_adapter(str(folder), trust_remote_code=True)
    mixed = [ModelInput("Answer the question in the audio.", speak(PAIRS[0][1]), "audio-text"),
             ModelInput(PAIRS[0][1], None, "text-only"),
             ModelInput(None, speak("Where can I buy a lamp for the desk in my room at home?"), "audio-only"),
             ModelInput("Hi", None, "text-only")]
    checks = []

    def check(name: str, ok) -> None:  # printed at once, so that a crash shows how far it got
        checks.append((name, bool(ok)))
        print("PASS" if ok else "FAIL", name, flush=True)

    batch = adapter.prepare(mixed)
    mask = batch["attention_mask"]
    spans = [int((row == adapter.tokenizer.audio_pad_id).sum()) for row in batch["input_ids"]]
    check("left padding, audio spans only in the spoken rows (the longer clip: more)",
          bool(mask[:, -1].all() and not mask[3, 0] and (mask.cumsum(-1) > 0).eq(mask.bool()).all()
          and spans[1] == spans[3] == 0 and spans[2] > spans[0] > 0))
    with torch.no_grad():
        batched = adapter.last_hidden(batch)
        alone = torch.cat([adapter.last_hidden(adapter.prepare([x])) for x in mixed])
        check("h(x) of a batch equals each input alone", torch.allclose(batched, alone, atol=1e-5, rtol=1e-4))
        check("hidden_states in batches of 3 equals each input alone",
              torch.allclose(adapter.hidden_states(mixed, batch_size=3, progress=False), alone,
                             atol=1e-5, rtol=1e-4))
        logits = adapter.model(**batch).logits[:, -1]
        check("h(x) is the LM head's input",
              torch.allclose(batched @ adapter.lm_head().weight.T, logits, atol=1e-5, rtol=1e-4))
        i = adapter.refusal_token_id()
        check('the refusal token is "I"', adapter.tokenizer.decode([i]) == "I")
        check('first_token_probs is softmax(logits)["I"]',
              torch.allclose(adapter.first_token_probs(mixed), torch.softmax(logits, -1)[:, i],
                             atol=1e-6, rtol=1e-4))
        batched_answers = adapter.generate(mixed, max_new_tokens=4, batch_size=4, progress=False)
        check("greedy answers (text) of a batch equal each input alone", all(batched_answers)
              and batched_answers == [adapter.generate([x], max_new_tokens=4, progress=False)[0] for x in mixed])
    responses = ["I cannot help with that.", "Sure, here are the steps.", "I can't"]
    sft = adapter.sft_batch(mixed[:3], responses)
    check("SFT labels are the response and <|im_end|>", all(
        sft["labels"][k][sft["labels"][k] != -100].tolist()
        == adapter.tokenizer.encode(r + "<|im_end|>", add_special_tokens=False) for k, r in enumerate(responses)))

    P = get_profile("paper")
    peft_model = get_peft_model(adapter.model, lora_config(replace(P.train, lora_r=4), adapter.lora_target_pattern))
    wrapped = {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}
    peft_model.unload()
    layers = adapter.model.config.num_hidden_layers
    check("LoRA wraps exactly the decoder's c_attn, c_proj, w1, w2, mlp.c_proj", wrapped == {
        f"transformer.h.{n}.{p}" for n in range(layers)
        for p in ("attn.c_attn", "attn.c_proj", "mlp.w1", "mlp.w2", "mlp.c_proj")})

    rows = []
    for k, (harmful, benign) in enumerate(PAIRS):
        rows.append({"id": f"h{k}", "text": harmful, "label": "harmful", "audio": speak(harmful)})
        rows.append({"id": f"b{k}", "text": benign, "label": "benign", "audio": speak(benign)})
    items = pd.DataFrame(rows)
    features = safety_features(adapter, items, progress=False)
    inputs = [e.train_input for e in training_examples(items)]
    vanilla = adapter.hidden_states(inputs, progress=False)
    cfg = replace(P.train, lora_r=4, epochs=2, lr=1e-3, batch_size=4, grad_accum=1)
    runs = Path(tempfile.mkdtemp(prefix="qwen-audio-chat-check-"))
    try:
        rrs = train_rrs(adapter, items, features, cfg, runs / "rrs", seed=0, progress=False)
        trained = adapter.hidden_states(inputs, progress=False, model=rrs.peft_model)
        check("RRS trains (2 epochs) and moves h(x)",
              [p.name for p in rrs.checkpoints] == ["epoch_1", "epoch_2"]
              and not torch.allclose(trained, vanilla, atol=1e-4))
        detach_lora(adapter)
        check("detaching LoRA gives the vanilla h(x) back",
              torch.equal(adapter.hidden_states(inputs, progress=False), vanilla))
        loaded = load_trained(adapter, rrs.checkpoints[-1], features)
        reloaded = adapter.hidden_states(inputs, progress=False, model=loaded)
        check("the RRS checkpoint loads back to the same h(x)", torch.allclose(reloaded, trained, atol=1e-6))
        detach_lora(adapter)
        harmful, refusals = refusal_sft_data(items, seed=0)
        sft_run = train_sft(adapter, harmful, refusals, replace(cfg, epochs=1), runs / "sft", seed=0, progress=False)
        check("refusal SFT trains (1 epoch)", [p.name for p in sft_run.checkpoints] == ["epoch_1"])
        detach_lora(adapter)
    finally:
        shutil.rmtree(runs, ignore_errors=True)
    return checks


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("remote_code", type=Path, help="folder with Qwen-Audio(-Chat)'s modeling_qwen.py etc.")
    ap.add_argument("--out", type=Path, default=None,
                    help="where to build the tiny model (default: a temporary folder)")
    args = ap.parse_args(argv)
    check_remote_code_dir(args.remote_code)
    check_transformers_4()
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("ffmpeg is not on the PATH; Qwen-Audio's tokenizer reads audio files through it")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="tiny-qwen-audio-chat-") as tmp:
        os.environ["RRS_CACHE_DIR"] = str(Path(tmp) / "cache")  # keep the representation cache out of cache/
        if args.out is None:
            checks = run_checks(build_tiny_model(args.remote_code, Path(tmp) / "model"))
        else:  # built beside --out and moved there whole, so an interrupted run leaves no half model
            with rio.atomic_folder(args.out.resolve()) as staged:
                checks = run_checks(build_tiny_model(args.remote_code, staged))
    failed = [name for name, ok in checks if not ok]
    print(f"{len(checks) - len(failed)} of {len(checks)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
