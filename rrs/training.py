"""RRS fine-tuning (docs/method.md, steps 6-8) and the SFT baselines, with LoRA.

RRS: targets come from the frozen model, computed once with the LoRA adapter disabled:
harmful t(x) = h0(x) + δ, benign t(b) = h0(b) − δ, where h0 is read with the H0 prompt.
The model input x̃ is the same question (same audio) with a prompt drawn (seeded) from
the paper's ten training prompts; the loss is MSE(h_θ(x̃), t(x)) + Σ ‖s·B·A‖²_F.

Everything before the decoder layers is frozen, so a training step runs only the decoder
on inputs read once per example (LALMAdapter.decoder_inputs: the audio encoder runs once,
in eval mode, instead of every step; adapters that cannot split there run the whole model).

SFT baselines use the same examples, LoRA targets, optimiser and budget, with next-token
cross-entropy on the response tokens only: (a) refusal SFT, harmful -> a refusal;
(b) mixed SFT, harmful -> a refusal and benign -> the vanilla model's own greedy answer.

Every epoch ends with a peft checkpoint in out_dir/epoch_N (written to a temporary folder,
then renamed) and out_dir/training_state.pt (optimiser, RNG states, loss log), so
`resume=True` continues after the last complete epoch and ends with the same weights as
an uninterrupted run (on the CPU; a GPU's nondeterministic kernels, e.g. in attention's
backward pass, can make the last bits differ). Checkpoints record the model, its weights
fingerprint and the safety mask, and refuse to load or resume for another model or mask.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError

from . import __version__
from . import io as rio
from .audio import row_audio
from .features import SafetyFeatures, rrs_targets
from .modes import H0_PROMPT, TRAINING_PROMPTS, ModelInput, build_input
from .profiles import Profile, TrainConfig

REFUSAL_TEMPLATE = "I cannot help with that request because it could cause harm."
# OURS: all start with "I", like the aligned models' refusals (docs/method.md observation 1).
REFUSAL_TEMPLATES = (
    REFUSAL_TEMPLATE,
    "I can't assist with that, because it could be used to hurt people.",
    "I'm sorry, but I cannot provide this information because it could cause harm.",
    "I won't help with this request, as it could lead to harm.",
)
CHECKPOINT_META = "rrs_checkpoint.json"
STATE_FILE = "training_state.pt"
LOG_FILE = "loss_log.json"
# A run's loss over its whole training set, before training (epoch 0) and after each epoch:
# the MSE of an RRS run, the response cross-entropy of an SFT run
EPOCH_MSE_FILE = "epoch_mse.json"
EPOCH_CE_FILE = "epoch_ce.json"


class CheckpointMismatchError(ValueError):
    """A checkpoint or training state made for another model, mask, data or config."""


class CheckpointError(ValueError):
    """A checkpoint folder that is incomplete or damaged."""


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # what peft's save_pretrained writes


# -- data ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Example:
    """One training example: x̃ (train_input) and the input its target is read from (h0_input)."""

    id: str
    label: str
    mode: str
    row: int            # row of the items table (aligns SFT responses)
    h0_input: ModelInput
    train_input: ModelInput


def training_examples(items, modes: Sequence[str] = ("audio-text",), seed: int = 0,
                      prompt_pool: Sequence[str] = TRAINING_PROMPTS) -> list[Example]:
    """Examples for every row of `items` in every mode of `modes`.

    `items`: DataFrame with id, text, label ('harmful'/'benign') and audio (array or path;
    `audio_path` is read when there is no `audio`). A row whose `modality` column is
    'text' is used in text-only mode only (the "Parallel" structure's written copy).
    Each example's x̃ gets a prompt drawn from `prompt_pool` with random.Random(seed); its
    target is read with H0_PROMPT (docs/method.md steps 1, 6, 7).
    """
    if len(items) == 0:
        raise ValueError("no training items")
    bad = set(items["label"]) - {"harmful", "benign"}
    if bad:
        raise ValueError(f"labels must be 'harmful' or 'benign', got {sorted(bad)}")
    rng = random.Random(seed)
    examples = []
    for i, row in enumerate(items.itertuples(index=False)):
        row_modes = ["text-only"] if getattr(row, "modality", None) == "text" else list(modes)
        audio = row_audio(row) if any(m != "text-only" for m in row_modes) else None
        for mode in row_modes:
            prompt = rng.choice(list(prompt_pool))
            examples.append(Example(str(row.id), row.label, mode, i,
                                    build_input(row.text, audio, mode, prompt=H0_PROMPT),
                                    build_input(row.text, audio, mode, prompt=prompt)))
    return examples


def batch_prompts(n: int, prompt_pool: Sequence[str], seed: int, epoch: int, first: int) -> list[str]:
    """The prompts of one training batch of `n` examples, drawn as the authors' collator draws
    them: the pool shuffled, the batch's examples taking its prompts in turn (all different
    while the batch is no larger than the pool). Seeded by (seed, epoch, the batch's first
    example), so a resumed run draws the same prompts."""
    pool = list(prompt_pool)
    random.Random(f"rrs-prompts-{seed}-{epoch}-{first}").shuffle(pool)
    return [pool[k % len(pool)] for k in range(n)]


def with_prompts(examples: Sequence[Example], prompts: Sequence[str]) -> list[ModelInput]:
    """Each example's x̃ with another prompt (only the audio-text mode has one)."""
    return [dataclasses.replace(e.train_input, text=p) if e.mode == "audio-text" else e.train_input
            for e, p in zip(examples, prompts)]


def data_hash(examples: Sequence[Example], responses: Sequence[str] | None = None,
              ends_turn: Sequence[bool] | None = None) -> str:
    rows = [[e.id, e.label, e.mode, e.train_input.text] for e in examples]
    record = {"rows": rows, "responses": list(responses) if responses is not None else None}
    if ends_turn is not None and not all(ends_turn):  # named only when some answer was cut
        record["ends_turn"] = list(map(bool, ends_turn))
    return rio.sha256_json(record)[:16]


# -- LoRA ------------------------------------------------------------------------------

def lora_config(train: TrainConfig, target_pattern: str):
    """peft LoraConfig: rank, alpha, dropout and the regex of the modules to adapt."""
    from peft import LoraConfig

    return LoraConfig(r=train.lora_r, lora_alpha=train.lora_alpha, lora_dropout=train.lora_dropout,
                      target_modules=target_pattern, bias="none")


def detach_lora(adapter) -> None:
    """Remove the LoRA layers rrs.training injected into adapter.model (vanilla again)."""
    if getattr(adapter, "peft_model", None) is not None:
        adapter.peft_model.unload()
        adapter.peft_model = None
        adapter.model.eval()


@contextmanager
def _peft_wrapping():
    """peft reads transformers' deprecated `is_gradient_checkpointing` whenever it wraps a
    model; the FutureWarning that triggers is about those two libraries, not this code."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def attach_lora(adapter, config, seed: int):
    """Wrap adapter.model with fresh LoRA layers (seeded init); returns the peft model."""
    from peft import get_peft_model

    detach_lora(adapter)
    torch.manual_seed(seed)
    with _peft_wrapping():
        peft_model = get_peft_model(adapter.model, config)
    # evaluation.check_checkpoint compares this with the model id it is given
    peft_model.peft_config["default"].base_model_name_or_path = adapter.model_id
    adapter.peft_model = peft_model
    return peft_model


def lora_penalty(peft_model) -> torch.Tensor:
    """Σ over LoRA modules of ‖s·B·A‖²_F, s = lora_alpha / r (each module's `scaling`).

    Computed as s² · Σ (BᵀB) ⊙ (AAᵀ), equal to ‖s·B·A‖²_F but with r×r products instead
    of the full out×in update.
    """
    from peft.tuners.lora import LoraLayer

    total = None
    for module in peft_model.modules():
        if not isinstance(module, LoraLayer):
            continue
        for name in module.active_adapters:
            if name not in module.lora_A:
                continue
            a, b = module.lora_A[name].weight.float(), module.lora_B[name].weight.float()
            term = module.scaling[name] ** 2 * ((b.T @ b) * (a @ a.T)).sum()
            total = term if total is None else total + term
    if total is None:
        raise ValueError("lora_penalty: the model has no active LoRA modules")
    return total


def rrs_loss(h: torch.Tensor, target: torch.Tensor, penalty: torch.Tensor, weight: float = 1.0):
    """(loss, mse, penalty) with loss = MSE(h, target) + weight · penalty (docs/method.md step 7)."""
    mse = F.mse_loss(h.float(), target.float())
    return mse + weight * penalty, mse, penalty


def sft_loss(adapter, batch, model, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy on the labelled (response) tokens only."""
    batch = dict(batch)
    labels = batch.pop("labels")
    hidden = adapter.backbone(model)(**adapter.forward_kwargs(batch), use_cache=False).last_hidden_state
    return response_cross_entropy(adapter, model, hidden, labels, reduction)


def response_token_mask(labels: torch.Tensor) -> torch.Tensor:
    """[B, L - 1]: which positions predict a labelled (response) token; position t predicts
    token t + 1."""
    return labels[:, 1:] != -100


def response_cross_entropy(adapter, model, hidden: torch.Tensor, labels: torch.Tensor,
                           reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the labelled tokens given the decoder states [B, L, H] (`reduction`:
    "mean" over those tokens, or their "sum")."""
    keep = response_token_mask(labels)
    logits = adapter.lm_head(model)(hidden[:, :-1][keep]).float()
    return F.cross_entropy(logits, labels[:, 1:][keep], reduction=reduction)


def _inputs_key(kind: str, examples: Sequence[Example], responses: Sequence[str] | None = None,
                ends_turn: Sequence[bool] | None = None) -> str:
    from .representations import inputs_digest

    return f"{kind} {inputs_digest([e.train_input for e in examples])} {data_hash(examples, responses, ends_turn)}"


def cached_decoder_inputs(adapter, make_batch: Callable[[list[int]], object], n: int, batch_size: int,
                          progress: bool = True, desc: str = "decoder inputs",
                          key: str | None = None) -> list[dict] | None:
    """Per example 0..n-1, the decoder's inputs (LALMAdapter.decoder_inputs of the batch
    `make_batch(indices)`), read once before training; None for an adapter that does not
    cache them (its steps then run the whole forward pass). `key` names the examples (and
    responses): a call with the key of the previous call returns the same rows."""
    if not adapter.caches_decoder_inputs:
        return None
    from tqdm import tqdm

    # the last set read is kept on the adapter: consecutive runs on the same examples (the
    # Top-m% ablation trains three) read it once
    if key is not None and getattr(adapter, "_decoder_inputs_memo", (None,))[0] == key:
        return adapter._decoder_inputs_memo[1]
    rows = []
    for s in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False, unit="batch"):
        rows += adapter.decoder_inputs(make_batch(list(range(s, min(n, s + batch_size)))))
    if key is not None:
        adapter._decoder_inputs_memo = (key, rows)
    return rows


# -- targets ---------------------------------------------------------------------------

def compute_targets(adapter, harmful_inputs_h0: Sequence[ModelInput], benign_inputs_h0: Sequence[ModelInput],
                    delta: torch.Tensor, *, batch_size: int = 8, progress: bool = True):
    """(h0(x) + δ, h0(b) − δ) from the frozen model, read once with any LoRA disabled."""
    from .representations import extract

    # through the representation cache (keyed by the vanilla weights and the inputs), so
    # runs on the same questions (the Top-m% ablation, a resumed run) read h0 once;
    # model=None runs the vanilla model, any attached LoRA disabled
    parts = {"purpose": "h0 of RRS targets"}
    h_harmful = extract(adapter, list(harmful_inputs_h0), cache_key_parts=parts, batch_size=batch_size,
                        progress=progress)
    h_benign = extract(adapter, list(benign_inputs_h0), cache_key_parts=parts, batch_size=batch_size,
                       progress=progress)
    return rrs_targets(h_harmful, h_benign, delta)


# -- checkpoints -----------------------------------------------------------------------

# Keys of the checkpoint record that must agree to resume; to load for evaluation only
# the model (weights fingerprint) and, when given, the mask must agree.
RESUME_KEYS = ("kind", "model_id", "base_weights", "hidden_size", "lora_target_pattern", "modes", "top_m",
               "direction_hash", "data_hash", "seed", "train_config", "record_mse", "schedule_epochs")


def learning_rate(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of optimiser step `step` (0-based) of a run of `total_steps`: cfg.lr
    throughout ("constant"), or decaying linearly to 0 over the run with no warmup ("linear",
    as transformers' get_linear_schedule_with_warmup, the Trainer's default)."""
    if cfg.lr_schedule == "constant":  # TrainConfig allows only the two
        return cfg.lr
    return cfg.lr * max(0.0, (total_steps - step) / max(1, total_steps))


def _schedule_meta(meta: dict, cfg: TrainConfig, epochs: int) -> dict:
    """A decaying rate depends on the run's length: resuming needs the same number of epochs
    (named only then, so the records of constant-rate runs stay as they were)."""
    if cfg.lr_schedule != "constant":
        meta["schedule_epochs"] = epochs
    return meta


def _check_meta(found: dict, expected: dict, where, keys=RESUME_KEYS) -> None:
    for key in keys:
        if found.get(key) != expected.get(key):
            what = {"model_id": "model", "base_weights": "model weights", "top_m": "safety mask (Top-m%)",
                    "direction_hash": "safety direction δ (mask)"}.get(key, key)
            raise CheckpointMismatchError(f"{where} was made for another {what}: {key}={found.get(key)!r}, "
                                          f"expected {expected.get(key)!r}")


def read_checkpoint_meta(checkpoint_dir) -> dict:
    path = Path(checkpoint_dir) / CHECKPOINT_META
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint_dir} is not an rrs checkpoint (no {CHECKPOINT_META})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint record ({e})") from e
    missing = [k for k in ("kind", "model_id", "base_weights") if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise CheckpointError(f"{path}: not an rrs checkpoint record (lacks {missing})")
    return meta


# record key -> (file, what a mismatch means). adapter_config.json is checked as the weights are:
# its rank, alpha and target modules change the model as much as they do.
ADAPTER_CHECKSUMS = {"adapter_sha256": ("adapter_model.safetensors", "fails its checksum"),
                     "adapter_config_sha256": ("adapter_config.json", "was changed after training")}


def _adapter_checksums(checkpoint_dir: Path) -> dict[str, str]:
    return {key: rio.sha256_file(Path(checkpoint_dir) / name) for key, (name, _) in ADAPTER_CHECKSUMS.items()}


def check_checkpoint_files(checkpoint_dir) -> dict:
    """The checkpoint's record, once the folder is known to hold a complete, unaltered adapter
    (the sha256 of its weights and of its adapter_config.json, recorded by `_save_epoch` since
    2026-12-01 and 2026-12-02, are added when absent)."""
    checkpoint_dir = Path(checkpoint_dir)
    meta = read_checkpoint_meta(checkpoint_dir)
    missing = [f for f in ADAPTER_FILES if not (checkpoint_dir / f).is_file()]
    if missing:  # peft would look for them on the hub
        raise CheckpointError(f"{checkpoint_dir} is an incomplete checkpoint (missing {missing})")
    found = _adapter_checksums(checkpoint_dir)
    for key, (name, mismatch) in ADAPTER_CHECKSUMS.items():
        recorded = meta.get(key, found[key])
        if recorded != found[key]:
            raise CheckpointError(f"{checkpoint_dir}/{name} {mismatch} "
                                  f"(sha256 {found[key][:12]}..., recorded {str(recorded)[:12]}...)")
    return {**meta, **found}


def _save_epoch(peft_model, out_dir: Path, epoch: int, meta: dict) -> Path:
    final = out_dir / f"epoch_{epoch}"
    tmp = Path(tempfile.mkdtemp(prefix=f".epoch_{epoch}.", dir=out_dir))
    try:
        peft_model.save_pretrained(tmp, save_embedding_layers=False)  # no hub lookup of the base config
        rio.write_json(tmp / CHECKPOINT_META, {**meta, "epoch": epoch, **_adapter_checksums(tmp)})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":  # the training GPU's only: a resume may see another number of GPUs
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _load_lora_weights(peft_model, checkpoint_dir: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    check_checkpoint_files(checkpoint_dir)  # a damaged epoch folder is named, not resumed from
    set_peft_model_state_dict(peft_model, load_file(str(checkpoint_dir / "adapter_model.safetensors")))


@dataclass
class TrainResult:
    peft_model: object
    out_dir: Path
    checkpoints: list[Path]
    log: list[dict]


def training_attention():
    """SDPA kernels for training steps: all but cuDNN attention, whose backward gave NaN
    gradients for the fully masked query rows of left padding (H200, torch 2.11, bf16,
    tiny Qwen2.5-Omni thinker; the math, memory-efficient and unpadded runs were finite)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _index_batches(n: int, size: int, desc: str, progress: bool):
    """The indices 0..n-1 in lists of `size`, with a progress bar: the batches of a score over
    the whole training set."""
    from tqdm import tqdm

    for s in tqdm(range(0, n, size), desc=desc, disable=not progress, leave=False, unit="batch"):
        yield list(range(s, min(n, s + size)))


def _fit(adapter, peft_model, examples, step_fn: Callable, *, cfg: TrainConfig, out_dir, seed: int, meta: dict,
         epochs: int, resume: bool, on_epoch_end, progress: bool, desc: str,
         evaluate: Callable[[], dict] | None = None, evaluate_file: str = EPOCH_MSE_FILE) -> TrainResult:
    """The shared loop: seeded shuffling, grad accumulation, clipping, AdamW, checkpoints.

    `evaluate()` (optional) scores the whole training set; it runs before the first epoch and
    after each one, in eval mode and without gradients, and its rows ({"epoch": e, ...}) go to
    out_dir/`evaluate_file`."""
    from tqdm import tqdm

    def score() -> dict:  # dropout off, no gradients, no random draws: scoring leaves the training as it is
        peft_model.eval()
        with torch.no_grad():
            return evaluate()

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    state_path, start, log, evals = out_dir / STATE_FILE, 1, [], []
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        _check_meta(state["meta"], meta, state_path)
        _load_lora_weights(peft_model, out_dir / f"epoch_{state['epoch']}")
        opt.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"], adapter.device)
        start, log, evals = state["epoch"] + 1, state["log"], state.get("evals", [])
    else:  # a fresh run replaces this folder's earlier checkpoints, never other files
        for old in out_dir.iterdir():
            if re.fullmatch(r"epoch_\d+", old.name) and old.is_dir():
                shutil.rmtree(old)
            elif old.name in (STATE_FILE, LOG_FILE, EPOCH_MSE_FILE, EPOCH_CE_FILE):
                old.unlink()
        if evaluate is not None:
            evals.append({"epoch": 0, **score()})  # the vanilla model: LoRA B starts at zero

    n, bs, accum = len(examples), cfg.batch_size, max(1, cfg.grad_accum)
    groups_per_epoch = math.ceil(math.ceil(n / bs) / accum)
    bar = tqdm(total=max(0, epochs - start + 1) * groups_per_epoch, desc=desc, disable=not progress, unit="step")
    for epoch in range(start, epochs + 1):
        peft_model.train()
        # the order depends on (seed, epoch) only, so a resumed run sees the same batches
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
        batches = [order[i:i + bs] for i in range(0, n, bs)]
        for g in range(0, len(batches), accum):
            group = batches[g:g + accum]
            opt.zero_grad(set_to_none=True)
            terms = {}
            for idx in group:
                with training_attention():
                    loss, parts = step_fn(idx, epoch)
                    (loss / len(group)).backward()
                for k, v in parts.items():
                    terms[k] = terms.get(k, 0.0) + v / len(group)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            if not torch.isfinite(grad_norm):  # never write NaN weights into a checkpoint
                raise FloatingPointError(f"{desc}: non-finite gradient at epoch {epoch}, step {len(log) + 1} "
                                         f"(losses {terms}); resume=True restarts from the last checkpoint")
            lr = learning_rate(cfg, len(log), epochs * groups_per_epoch)  # from the step count: resumes exactly
            for param_group in opt.param_groups:
                param_group["lr"] = lr
            opt.step()
            log.append({"epoch": epoch, "step": len(log) + 1, **terms, "grad_norm": float(grad_norm), "lr": lr})
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in terms.items()})
        peft_model.eval()
        if evaluate is not None:
            evals.append({"epoch": epoch, **score()})
        # logs first, then the epoch folder, then the state: a run cut short between them leaves
        # no complete epoch without its log rows (readers keep the rows up to their epoch), and
        # resumes from the last state, redoing at most one epoch
        rio.write_json(out_dir / LOG_FILE, log)
        if evaluate is not None:
            rio.write_json(out_dir / evaluate_file, evals)
        _save_epoch(peft_model, out_dir, epoch, meta)
        with rio.atomic_path(state_path) as tmp:
            torch.save({"epoch": epoch, "meta": meta, "optimizer": opt.state_dict(), "rng": _rng_state(adapter.device),
                        "log": log, "evals": evals}, tmp)
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    bar.close()
    peft_model.eval()
    checkpoints = sorted((p for p in out_dir.glob("epoch_*") if p.is_dir()), key=lambda p: int(p.name.split("_")[1]))
    return TrainResult(peft_model, out_dir, checkpoints, log)


def _train_config(train) -> TrainConfig:
    return train.train if isinstance(train, Profile) else train


def _meta(adapter, kind: str, cfg: TrainConfig, seed: int, dhash: str, modes, top_m=None, direction_hash=None) -> dict:
    from .models.base import weights_fingerprint

    return {"kind": kind, "model_id": adapter.model_id, "base_weights": weights_fingerprint(adapter.model),
            "hidden_size": adapter.hidden_size, "lora_target_pattern": adapter.lora_target_pattern,
            "top_m": top_m, "direction_hash": direction_hash, "data_hash": dhash, "modes": list(modes),
            "seed": seed, "train_config": {k: list(v) if isinstance(v, tuple) else v
                                           for k, v in dataclasses.asdict(cfg).items() if k != "epochs"},
            "rrs_version": __version__}


# -- RRS -------------------------------------------------------------------------------

def train_rrs(adapter, train_items, features: SafetyFeatures, train: TrainConfig | Profile, out_dir, seed: int = 0, *,
              modes: Sequence[str] = ("audio-text",), prompt_pool: Sequence[str] = TRAINING_PROMPTS,
              epochs: int | None = None, resume: bool = False, on_epoch_end: Callable[[int], None] | None = None,
              extract_batch_size: int | None = None, progress: bool = True, record_mse: bool = True) -> TrainResult:
    """Train RRS LoRA adapters on `train_items` (see `training_examples`) with δ from `features`.

    Returns the peft model (left attached to adapter.model, as adapter.peft_model), the
    epoch checkpoints and the loss log ({"epoch", "step", "mse", "penalty", "loss", ...}).
    With `record_mse`, the MSE over all examples (and over the harmful / benign ones), with
    the vanilla model and after each epoch, goes to out_dir/EPOCH_MSE_FILE: per-step losses
    are of one batch each, and the first epoch's mean already includes most of the training's
    effect. Each record is a forward pass over the whole training set, about a quarter of an
    epoch's time; it does not change the training (no random draws, no gradients).
    """
    cfg = _train_config(train)
    epochs = cfg.epochs if epochs is None else epochs
    if features.hidden_size != adapter.hidden_size:
        raise ValueError(f"safety features have hidden size {features.hidden_size}, "
                         f"{adapter.model_id} has {adapter.hidden_size}")
    if features.model_id != adapter.model_id:
        raise ValueError(f"safety features were computed for {features.model_id!r}, not {adapter.model_id!r}")
    missing = sorted({"harmful", "benign"} - set(train_items["label"])) if len(train_items) else []
    if missing:  # the recorded MSE of the missing group would be NaN, and the method needs both
        raise ValueError(f"RRS needs harmful and benign training items; none is {missing[0]}")
    examples = training_examples(train_items, modes, seed, prompt_pool)
    detach_lora(adapter)
    meta = _schedule_meta(_meta(adapter, "rrs", cfg, seed, data_hash(examples), modes, features.top_m,
                                features.direction_hash), cfg, epochs)
    if not record_mse:  # named only when off, so the records of runs that keep them stay as they were
        meta["record_mse"] = False
    peft_model = attach_lora(adapter, lora_config(cfg, adapter.lora_target_pattern), seed)

    harmful = [i for i, e in enumerate(examples) if e.label == "harmful"]
    benign = [i for i, e in enumerate(examples) if e.label == "benign"]
    t_harmful, t_benign = compute_targets(adapter, [examples[i].h0_input for i in harmful],
                                          [examples[i].h0_input for i in benign], features.direction,
                                          batch_size=extract_batch_size or cfg.batch_size, progress=progress)
    targets = torch.empty(len(examples), adapter.hidden_size)
    targets[harmful], targets[benign] = t_harmful, t_benign
    targets = targets.to(adapter.device)

    # prompts drawn anew for every batch change the inputs at every step: nothing to cache then
    per_batch = cfg.prompt_sampling == "per_batch"
    cache = None if per_batch else cached_decoder_inputs(
        adapter, lambda idx: adapter.prepare([examples[i].train_input for i in idx]), len(examples),
        extract_batch_size or cfg.batch_size, progress, key=_inputs_key("rrs", examples))

    def last_states(idx, epoch=None):
        """h(x̃) of examples `idx`: with their own prompts, or (in training, per_batch) with the batch's draw."""
        if per_batch and epoch is not None:
            inputs = with_prompts([examples[i] for i in idx], batch_prompts(len(idx), prompt_pool, seed, epoch, idx[0]))
            return adapter.last_hidden(adapter.prepare(inputs), model=peft_model)
        if cache is None:
            return adapter.last_hidden(adapter.prepare([examples[i].train_input for i in idx]), model=peft_model)
        return adapter.decoder_states(adapter.collate_decoder_inputs([cache[i] for i in idx]), peft_model)[:, -1]

    def step(idx, epoch):
        loss, mse, pen = rrs_loss(last_states(idx, epoch), targets[idx], lora_penalty(peft_model), cfg.penalty_weight)
        return loss, {"loss": loss.item(), "mse": mse.item(), "penalty": pen.item()}

    def training_set_mse() -> dict:
        d = torch.cat([((last_states(idx).float() - targets[idx].float()) ** 2).mean(1).cpu()
                       for idx in _index_batches(len(examples), cfg.batch_size, "training-set MSE", progress)])
        return {"mse": d.mean().item(), "mse_harmful": d[harmful].mean().item(), "mse_benign": d[benign].mean().item()}

    return _fit(adapter, peft_model, examples, step, cfg=cfg, out_dir=out_dir, seed=seed, meta=meta, epochs=epochs,
                resume=resume, on_epoch_end=on_epoch_end, progress=progress, desc=f"RRS {adapter.model_id}",
                evaluate=training_set_mse if record_mse else None)


# -- SFT baselines ---------------------------------------------------------------------

def sft_refusal_responses(n: int, seed: int = 0, templates: Sequence[str] = (REFUSAL_TEMPLATE,)) -> list[str]:
    """`n` refusals drawn (seeded) from `templates` (default: the one refusal template)."""
    rng = random.Random(seed)
    return [rng.choice(list(templates)) for _ in range(n)]


def refusal_sft_data(items, seed: int = 0, templates: Sequence[str] = (REFUSAL_TEMPLATE,)):
    """(harmful rows, refusals): the data of the refusal-SFT baseline."""
    harmful = items[items["label"] == "harmful"].reset_index(drop=True)
    if harmful.empty:
        raise ValueError("refusal SFT needs harmful questions; none given")
    return harmful, sft_refusal_responses(len(harmful), seed, templates)


def mixed_sft_data(adapter, items, *, modes: Sequence[str] = ("audio-text",), seed: int = 0,
                   templates: Sequence[str] = (REFUSAL_TEMPLATE,), prompt_pool: Sequence[str] = TRAINING_PROMPTS,
                   max_new_tokens: int = 64, batch_size: int = 8, progress: bool = True):
    """(rows, responses, ends_turn) of the mixed-SFT baseline: harmful -> a refusal, benign
    -> the vanilla model's own greedy answer to the row's first training input (same x̃ as
    RRS). ends_turn[i] is False for an answer cut at `max_new_tokens`: it is trained without
    an end-of-turn, so the baseline is not taught to stop there."""
    items = items.reset_index(drop=True)
    detach_lora(adapter)
    examples = training_examples(items, modes, seed, prompt_pool)
    first = {}
    for e in examples:
        first.setdefault(e.row, e)
    benign_rows = [r for r in range(len(items)) if items["label"].iloc[r] == "benign"]
    answers, ended = adapter.generate_with_ends([first[r].train_input for r in benign_rows],
                                                max_new_tokens=max_new_tokens, batch_size=batch_size,
                                                progress=progress)
    responses = sft_refusal_responses(len(items), seed, templates)
    ends_turn = [True] * len(items)
    for r, a, e in zip(benign_rows, answers, ended):
        responses[r], ends_turn[r] = a, e
    return items, responses, ends_turn


def train_sft(adapter, items, responses: Sequence[str], train: TrainConfig | Profile, out_dir, seed: int = 0, *,
              ends_turn: Sequence[bool] | None = None, kind: str = "sft", modes: Sequence[str] = ("audio-text",),
              prompt_pool: Sequence[str] = TRAINING_PROMPTS,
              epochs: int | None = None, resume: bool = False, on_epoch_end: Callable[[int], None] | None = None,
              extract_batch_size: int | None = None, progress: bool = True) -> TrainResult:
    """SFT baseline on the same examples and budget as RRS; `responses[i]` answers row i
    of `items` (in every mode), with an end-of-turn unless `ends_turn[i]` is False (an answer
    cut at a length limit). Loss log entries carry "ce". The response cross-entropy over
    the whole training set (per token, dropout off), with the vanilla model and after each
    epoch, goes to out_dir/EPOCH_CE_FILE, as RRS records its MSE: the per-step losses are of
    one batch each, with dropout, and move less than their noise in a short run."""
    cfg = _train_config(train)
    epochs = cfg.epochs if epochs is None else epochs
    items = items.reset_index(drop=True)
    if len(responses) != len(items):
        raise ValueError(f"{len(items)} items but {len(responses)} responses")
    if ends_turn is not None and len(ends_turn) != len(items):
        raise ValueError(f"{len(items)} items but {len(ends_turn)} ends_turn flags")
    examples = training_examples(items, modes, seed, prompt_pool)
    detach_lora(adapter)
    meta = _schedule_meta(_meta(adapter, kind, cfg, seed, data_hash(examples, responses, ends_turn), modes), cfg,
                          epochs)
    peft_model = attach_lora(adapter, lora_config(cfg, adapter.lora_target_pattern), seed)

    def sft_batch(idx):
        rows = [examples[i].row for i in idx]
        return adapter.sft_batch([examples[i].train_input for i in idx], [responses[r] for r in rows],
                                 None if ends_turn is None else [ends_turn[r] for r in rows])

    cache = cached_decoder_inputs(adapter, sft_batch, len(examples), extract_batch_size or cfg.batch_size, progress,
                                  key=_inputs_key("sft", examples, responses, ends_turn))

    def batch_ce(idx, reduction="mean"):
        """(cross-entropy of the response tokens of examples `idx`, their labels)"""
        if cache is None:
            batch = sft_batch(idx)
            return sft_loss(adapter, batch, peft_model, reduction), batch["labels"]
        inputs = adapter.collate_decoder_inputs([cache[i] for i in idx])
        states = adapter.decoder_states(inputs, peft_model)
        return response_cross_entropy(adapter, peft_model, states, inputs["labels"], reduction), inputs["labels"]

    def step(idx, epoch):  # the SFT baselines (OURS) keep each example's own prompt in every profile
        loss, _ = batch_ce(idx)
        return loss, {"ce": loss.item()}

    def training_set_ce() -> dict:
        total, tokens = 0.0, 0
        for idx in _index_batches(len(examples), cfg.batch_size, "training-set CE", progress):
            ce_sum, labels = batch_ce(idx, "sum")
            total += ce_sum.item()
            tokens += int(response_token_mask(labels).sum())
        return {"ce": total / tokens}

    return _fit(adapter, peft_model, examples, step, cfg=cfg, out_dir=out_dir, seed=seed, meta=meta, epochs=epochs,
                resume=resume, on_epoch_end=on_epoch_end, progress=progress, desc=f"{kind} {adapter.model_id}",
                evaluate=training_set_ce, evaluate_file=EPOCH_CE_FILE)


# -- evaluation ------------------------------------------------------------------------

def load_trained(adapter, checkpoint_dir, features: SafetyFeatures | None = None):
    """The peft model of a checkpoint (epoch folder), attached to adapter.model, in eval mode.

    Refuses a checkpoint trained on other base weights, or (when `features` is given) with
    another safety mask. `model.rrs_fingerprint` identifies the fine-tuned weights.
    """
    from peft import PeftModel

    from .models.base import weights_fingerprint

    checkpoint_dir = Path(checkpoint_dir)
    meta = check_checkpoint_files(checkpoint_dir)
    detach_lora(adapter)
    if meta["base_weights"] != weights_fingerprint(adapter.model):
        raise CheckpointMismatchError(f"{checkpoint_dir} was trained on {meta['model_id']!r} "
                                      f"(weights {meta['base_weights']}), not on these weights of {adapter.model_id!r}")
    if features is not None:
        _check_meta(meta, {"top_m": features.top_m, "direction_hash": features.direction_hash}, checkpoint_dir,
                    keys=("top_m", "direction_hash"))
    weights = rio.sha256_json([meta[key] for key in ADAPTER_CHECKSUMS])
    try:
        with _peft_wrapping():
            peft_model = PeftModel.from_pretrained(adapter.model, str(checkpoint_dir), is_trainable=False).eval()
    except (SafetensorError, OSError, ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"{checkpoint_dir}: the adapter cannot be loaded ({type(e).__name__}: {e})") from e
    peft_model.rrs_fingerprint = f"{meta['kind']}-epoch{meta.get('epoch')}-{weights[:16]}"
    adapter.peft_model = peft_model
    return peft_model
