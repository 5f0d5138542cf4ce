"""The model interface every notebook and stage codes against, and the model registry.

One `LALMAdapter` wraps one loaded audio LLM and its processor. It turns model-agnostic
`rrs.modes.ModelInput`s into chat-templated, LEFT-padded batches and reads the vector RRS
works on: h(x), the output of the LLM's final norm at the last input position, i.e. the
input of the LM head that gives the first response token (docs/method.md, glossary). With
left padding, position -1 is the last real token of every row.

Subclasses (qwen2_audio.py, qwen25_omni.py, qwen_audio_chat.py) only say how to build the
chat text, call the processor, and where the backbone (everything but the LM head) is.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from transformers import BatchFeature

from ..modes import ModelInput
from ..paths import REPO_ROOT

SAMPLE_RATE = 16_000
MINI_MODEL_DIR = REPO_ROOT / "rrs" / "mini" / "model"

# Every q/k/v/o/gate/up/down projection of the LLM's decoder layers; never the audio
# encoder (`audio_tower.layers.N.self_attn.q_proj` exists too) nor the vision tower.
# peft matches a string target_modules with re.fullmatch against each module's full name.
QWEN2_LLM_LORA_PATTERN = (
    r"(.*\.)?language_model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)"
    r"|mlp\.(gate_proj|up_proj|down_proj))"
)
# Qwen-Audio-Chat (remote code): fused c_attn = q/k/v, c_proj = o; w1/w2/c_proj = gate/up/down.
QWEN1_LLM_LORA_PATTERN = r"(.*\.)?transformer\.h\.\d+\.(attn\.(c_attn|c_proj)|mlp\.(w1|w2|c_proj))"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelNotAvailableError(OSError):
    """A registered hub model whose weights are not on this machine."""


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def check_device(device: str) -> torch.device:
    """One device for the whole model: inputs, targets and LoRA go to it (no device_map="auto")."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not one torch device such as cpu, cuda or cuda:1; "
                         "rrs runs a model on a single device") from e


def check_device_and_dtype(device: str | None, dtype) -> None:
    """Refuse a bad --device or --dtype before anything loads (None: not given, nothing to check)."""
    if device is not None:
        check_device(device)
    if dtype is not None:
        torch_dtype(dtype)


def unwrap(model):
    """The transformers model under a peft wrapper (LoRA layers stay injected in it)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _is_tuner_layer(module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return isinstance(module, BaseTunerLayer)


# Plain greedy decoding. The values a hub model's generation_config.json sets fill every argument
# not given here (a repetition penalty of 1.1, say, would reweigh the first response token), so
# the logits processors that change a greedy choice are switched off by name.
GREEDY = dict(do_sample=False, num_beams=1, repetition_penalty=1.0, no_repeat_ngram_size=0)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A cheap, device-independent hash of the weights a forward pass uses.

    For every parameter: its name, shape and 64 evenly spaced elements (as float32 bytes).
    Any training or merge that moves most weights changes it; loading the same weights on
    CPU or GPU, in float32 or bfloat16-exact values, does not. Active LoRA parameters
    count; disabled ones (`with peft_model.disable_adapter()`) do not, and names are taken
    without peft's wrappers, so a model with its LoRA disabled has its vanilla fingerprint.
    """
    disabled = {name for name, m in model.named_modules() if _is_tuner_layer(m) and m.disable_adapters}
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name and name.split(".lora_")[0] in disabled:
                continue
            canonical = name.removeprefix("base_model.model.").replace(".base_layer", "")
            flat = p.detach().reshape(-1)
            # indices always from the CPU kernel: float32 linspace rounds differently on CUDA above
            # 2**24 elements (an embedding matrix), which would change the fingerprint with the device
            idx = torch.linspace(0, flat.numel() - 1, steps=min(64, flat.numel())).long().to(flat.device)
            h.update(f"{canonical}:{tuple(p.shape)}".encode())
            h.update(flat[idx].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class _DecoderReached(Exception):
    """Stops a forward pass once the decoder's inputs are captured (LALMAdapter.decoder_inputs)."""


class LALMAdapter:
    """One loaded audio LLM + processor, with batched, left-padded access to h(x).

    Attributes: model_id, model, processor, tokenizer, device, dtype, lora_target_pattern,
    system_prompt, and `peft_model`: the LoRA wrapper rrs.training injected into `model`
    (or None). Methods taking `model=` run the vanilla model when it is None (any attached
    LoRA disabled for the call) and the given (peft) model otherwise.
    """

    lora_target_pattern: str = QWEN2_LLM_LORA_PATTERN
    system_prompt: str = "You are a helpful assistant."
    end_of_turn: str = "<|im_end|>"  # closes an assistant answer; part of the SFT labels
    refusal_token: str = "I"

    def __init__(self, model, processor, *, model_id: str, device: str = "cpu",
                 dtype: str | torch.dtype = "float32", revision: str | None = None):
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.model_id = model_id
        self.device = torch.device(device)
        self.dtype = torch_dtype(dtype)
        self.revision = revision
        self.peft_model = None

    @contextlib.contextmanager
    def vanilla(self):
        """Inside, any LoRA adapter attached to self.model is disabled (not nested twice)."""
        pm = self.peft_model
        if pm is None or any(_is_tuner_layer(m) and m.disable_adapters for m in pm.modules()):
            yield
        else:
            with pm.disable_adapter():
                yield

    def _run(self, model):
        """(model to call, context to call it in) for a `model=` argument."""
        return (self.model, self.vanilla()) if model is None else (model, contextlib.nullcontext())

    # -- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, path_or_id: str, *, model_id: str, device: str = "cpu", dtype: str = "float32",
             revision: str | None = None, local_files_only: bool = False,
             trust_remote_code: bool = False) -> "LALMAdapter":
        raise NotImplementedError

    # -- subclass hooks ------------------------------------------------------------------
    def conversation(self, x: ModelInput) -> list[dict]:
        """Chat messages for one input: system prompt, then user = [audio] + [text]."""
        content = []
        if x.audio is not None:
            # The key "audio_url" is what the Qwen2-Audio template tests for; the value is
            # never read (the waveform goes to the processor separately).
            content.append({"type": "audio", "audio_url": "<waveform>"})
        if x.text:
            content.append({"type": "text", "text": x.text})
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": content}]

    def chat_texts(self, inputs: Sequence[ModelInput]) -> list[str]:
        return list(self.processor.apply_chat_template([self.conversation(x) for x in inputs],
                                                       tokenize=False, add_generation_prompt=True))

    def backbone(self, model):
        """The module that returns `last_hidden_state` (post final norm) for a batch."""
        return unwrap(model).model

    def lm_head(self, model=None) -> torch.nn.Module:
        return unwrap(model if model is not None else self.model).get_output_embeddings()

    @property
    def hidden_size(self) -> int:
        return self.lm_head().weight.shape[1]

    # -- batches -------------------------------------------------------------------------
    def _encode(self, texts: list[str], audios: list[np.ndarray]) -> BatchFeature:
        self.tokenizer.padding_side = "left"
        batch = self.processor(text=texts, audio=audios or None, return_tensors="pt", padding=True,
                               sampling_rate=SAMPLE_RATE)
        return self._to_device(batch)

    def _to_device(self, batch: BatchFeature) -> BatchFeature:
        batch = batch.to(self.device)
        if "input_features" in batch:
            batch["input_features"] = batch["input_features"].to(self.dtype)
        return batch

    def prepare(self, inputs: Sequence[ModelInput]) -> BatchFeature:
        """Chat template + audio features for a batch; LEFT padded; on the model's device."""
        if not inputs:
            raise ValueError("prepare() got an empty list of inputs")
        texts = self.chat_texts(inputs)
        audios = [np.asarray(x.audio, dtype=np.float32) for x in inputs if x.audio is not None]
        return self._encode(texts, audios)

    def forward_kwargs(self, batch: BatchFeature) -> dict:
        return dict(batch)

    def last_hidden(self, batch: BatchFeature, model=None) -> torch.Tensor:
        """[B, H] final-norm output at position -1 (the LM head's input for the first
        response token). Keeps the graph (use under no_grad for extraction); pass `model=`
        a peft model to run it with its LoRA adapter."""
        model, context = self._run(model)
        with context:
            out = self.backbone(model)(**self.forward_kwargs(batch), use_cache=False)
        return out.last_hidden_state[:, -1]

    def _chunks(self, inputs: Sequence, batch_size: int, progress: bool, desc: str):
        from tqdm import tqdm

        starts = range(0, len(inputs), batch_size)
        return tqdm(starts, desc=desc, disable=not progress, leave=False, unit="batch")

    @torch.no_grad()
    def hidden_states(self, inputs: Sequence[ModelInput], batch_size: int = 8, progress: bool = True,
                      model=None) -> torch.Tensor:
        """[N, H] float32 CPU tensor of h(x) for every input, in order (no grad, batched)."""
        model, context = self._run(model)
        was_training = model.training
        model.eval()
        out = []
        with context:
            for s in self._chunks(inputs, batch_size, progress, f"h(x) {self.model_id}"):
                out.append(self.last_hidden(self.prepare(inputs[s:s + batch_size]), model=model).float().cpu())
        model.train(was_training)
        return torch.cat(out) if out else torch.empty(0, self.hidden_size)

    def refusal_token_id(self) -> int:
        """Id of "I", the first token of the model's refusals (docs/method.md observation 1)."""
        ids = self.tokenizer.encode(self.refusal_token, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"{self.model_id}: {self.refusal_token!r} encodes to {len(ids)} tokens "
                             f"{ids}, not exactly one; RRS needs a single refusal token")
        return int(ids[0])

    def refusal_token_row(self) -> torch.Tensor:
        """w_I: the LM-head row of "I" (float32, CPU)."""
        return self.lm_head().weight[self.refusal_token_id()].detach().float().cpu()

    @torch.no_grad()
    def first_token_probs(self, inputs: Sequence[ModelInput], token_id: int | None = None,
                          batch_size: int = 8, model=None, progress: bool = False) -> torch.Tensor:
        """[N] softmax probability of `token_id` (default "I") as the first response token."""
        token_id = self.refusal_token_id() if token_id is None else token_id
        h = self.hidden_states(inputs, batch_size=batch_size, progress=progress, model=model)
        head = self.lm_head(model)
        logits = head(h.to(self.device, head.weight.dtype)).float()
        return torch.softmax(logits, dim=-1)[:, token_id].cpu()

    @torch.no_grad()
    def first_token_probs_forward(self, inputs: Sequence[ModelInput], token_id: int | None = None,
                                  model=None) -> torch.Tensor:
        """[N] the same probability from the whole model's own logits (one batch, `model(**batch)`
        with the positions generation uses), not through h(x) and the LM head: the check that
        those two are read at the right place."""
        token_id = self.refusal_token_id() if token_id is None else token_id
        model, context = self._run(model)
        was_training = model.training
        model.eval()
        with context:
            logits = model(**self.forward_kwargs(self.prepare(inputs)), use_cache=False).logits[:, -1].float()
        model.train(was_training)
        return torch.softmax(logits, dim=-1)[:, token_id].cpu()

    def generation_kwargs(self) -> dict:
        pad = self.tokenizer.pad_token_id
        eos = [i for i in (self.tokenizer.convert_tokens_to_ids(self.end_of_turn), self.tokenizer.eos_token_id)
               if isinstance(i, int) and i >= 0]
        return dict(pad_token_id=pad if pad is not None else eos[0], eos_token_id=sorted(set(eos)))

    def generate(self, inputs: Sequence[ModelInput], max_new_tokens: int = 32, batch_size: int = 8,
                 model=None, progress: bool = True) -> list[str]:
        """Greedy answers (new text only), batched with left padding."""
        return self.generate_with_ends(inputs, max_new_tokens, batch_size, model, progress)[0]

    @torch.no_grad()
    def generate_with_ends(self, inputs: Sequence[ModelInput], max_new_tokens: int = 32, batch_size: int = 8,
                           model=None, progress: bool = True) -> tuple[list[str], list[bool]]:
        """(greedy answers, whether each ended its turn within `max_new_tokens`): an answer that
        did not was cut at the limit."""
        model, context = self._run(model)
        was_training = model.training
        model.eval()
        kwargs = self.generation_kwargs()
        stops = torch.tensor(kwargs["eos_token_id"])
        answers, ended = [], []
        with context:
            for s in self._chunks(inputs, batch_size, progress, f"generate {self.model_id}"):
                batch = self.prepare(inputs[s:s + batch_size])
                out = model.generate(**batch, max_new_tokens=max_new_tokens, **GREEDY, **kwargs)
                new = out[:, batch["input_ids"].shape[1]:]
                answers += self.tokenizer.batch_decode(new, skip_special_tokens=True)
                ended += torch.isin(new.cpu(), stops).any(dim=1).tolist()
        model.train(was_training)
        return [a.strip() for a in answers], ended

    def sft_batch(self, inputs: Sequence[ModelInput], responses: Sequence[str],
                  ends_turn: Sequence[bool] | None = None) -> BatchFeature:
        """Prompt + response + end-of-turn, left padded; `labels` = the response tokens and
        the end-of-turn token, -100 elsewhere (prompt, audio, padding). A response whose
        `ends_turn` is False (an answer cut at a length limit) gets no end-of-turn, so the
        model is not taught to stop where the cut was."""
        if len(inputs) != len(responses):
            raise ValueError(f"{len(inputs)} inputs but {len(responses)} responses")
        ends_turn = [True] * len(responses) if ends_turn is None else list(ends_turn)
        if len(ends_turn) != len(responses):
            raise ValueError(f"{len(responses)} responses but {len(ends_turn)} ends_turn flags")
        answers = [r + (self.end_of_turn if end else "") for r, end in zip(responses, ends_turn)]
        texts = [t + a for t, a in zip(self.chat_texts(inputs), answers)]
        audios = [np.asarray(x.audio, dtype=np.float32) for x in inputs if x.audio is not None]
        batch = self._encode(texts, audios)
        labels = torch.full_like(batch["input_ids"], -100)
        for i, (r, a) in enumerate(zip(responses, answers)):
            ids = torch.tensor(self.tokenizer.encode(a, add_special_tokens=False))
            n = len(ids)
            if n == 0:
                raise ValueError(f"{self.model_id}: response {i} is empty and ends no turn; nothing to train on")
            # With left padding the answer is the tail of each row; check the tokenization of
            # prompt+answer splits at the boundary so the labels are exactly the answer.
            if not torch.equal(batch["input_ids"][i, -n:].cpu(), ids):
                raise ValueError(f"{self.model_id}: the response {r!r} does not tokenize the same "
                                 "inside the chat as alone; cannot place its labels")
            labels[i, -n:] = ids.to(labels.device)
        batch["labels"] = labels
        return batch

    # -- the frozen part of a training step --------------------------------------------
    # LoRA adapts only the decoder layers, so everything before them (audio features, the
    # audio encoder and projector, the token embeddings) is a constant of each example.
    # Training reads the decoder's inputs once per example and then runs only the decoder
    # per step; on the mini model this skips the encoder, two thirds of a forward pass.
    caches_decoder_inputs: bool = True

    def decoder(self, model=None) -> torch.nn.Module:
        """The decoder stack: input embeddings in, final-norm states out (LoRA's only home)."""
        return self.backbone(model if model is not None else self.model).language_model

    @torch.no_grad()
    def decoder_inputs(self, batch: BatchFeature) -> list[dict]:
        """Per row of a prepared batch (`prepare` or `sft_batch`), what the decoder receives,
        padding removed: `inputs_embeds` [L, H], `position_ids` [..., L] and, for an SFT
        batch, `labels` [L]; tensors on the CPU. Read with the model in eval mode (the
        frozen encoder without dropout), by stopping the forward pass at the decoder."""
        if not self.caches_decoder_inputs:
            raise NotImplementedError(f"{self.model_id}: decoder inputs are not cached for this model")
        captured = {}

        def capture(module, args, kwargs):
            captured.update(kwargs)
            raise _DecoderReached

        model = self.model
        was_training = model.training
        model.eval()
        kwargs = self.forward_kwargs({k: v for k, v in batch.items() if k != "labels"})
        handle = self.decoder(model).register_forward_pre_hook(capture, with_kwargs=True)
        try:
            self.backbone(model)(**kwargs, use_cache=False)
        except _DecoderReached:
            pass
        finally:
            handle.remove()
            model.train(was_training)
        if "inputs_embeds" not in captured:
            raise RuntimeError(f"{self.model_id}: the backbone never called its decoder")
        extra = sorted(k for k, v in captured.items() if torch.is_tensor(v)
                       and k not in ("inputs_embeds", "attention_mask", "position_ids"))
        if extra:
            raise NotImplementedError(f"{self.model_id}: the decoder also takes {extra}; not cached")
        embeds, mask, positions = captured["inputs_embeds"], captured["attention_mask"].bool(), captured["position_ids"]
        rows = []
        for i in range(embeds.shape[0]):
            keep = mask[i]
            row = {"inputs_embeds": embeds[i, keep].cpu()}
            if positions is not None:  # [B, L] (RoPE) or [k, B, L] (M-RoPE)
                row["position_ids"] = (positions[i, keep] if positions.dim() == 2 else positions[:, i, keep]).cpu()
            if "labels" in batch:
                row["labels"] = batch["labels"][i, keep].cpu()
            rows.append(row)
        return rows

    def collate_decoder_inputs(self, rows: Sequence[dict]) -> dict:
        """Left-pad per-example decoder inputs into a batch on the device. Padding is masked
        out of attention, so its values never reach a real token's state."""
        n = max(r["inputs_embeds"].shape[0] for r in rows)
        pad = self.backbone(self.model).get_input_embeddings().weight[self.generation_kwargs()["pad_token_id"]]

        def left_pad(t, value, dim=-1):
            width = n - t.shape[dim]
            if width == 0:
                return t
            shape = list(t.shape)
            shape[dim] = width
            return torch.cat([torch.full(shape, value, dtype=t.dtype), t], dim=dim)

        embeds = torch.stack([torch.cat([pad.detach().cpu().to(r["inputs_embeds"].dtype).expand(
            n - r["inputs_embeds"].shape[0], -1), r["inputs_embeds"]]) for r in rows])
        mask = torch.stack([left_pad(torch.ones(r["inputs_embeds"].shape[0], dtype=torch.long), 0) for r in rows])
        out = {"inputs_embeds": embeds, "attention_mask": mask}
        if "position_ids" in rows[0]:
            pos = [left_pad(r["position_ids"], 0) for r in rows]
            out["position_ids"] = torch.stack(pos, dim=0 if pos[0].dim() == 1 else 1)
        if "labels" in rows[0]:
            out["labels"] = torch.stack([left_pad(r["labels"], -100) for r in rows])
        return {k: v.to(self.device) for k, v in out.items()}

    def decoder_states(self, inputs: dict, model) -> torch.Tensor:
        """[B, L, H] final-norm states of the decoder for collated decoder inputs (keeps the
        graph; `model` is the peft model being trained)."""
        inputs = {k: v for k, v in inputs.items() if k != "labels"}
        return self.decoder(model)(**inputs, use_cache=False).last_hidden_state

    def describe(self) -> dict:
        return {"model_id": self.model_id, "class": type(self).__name__, "revision": self.revision,
                "dtype": str(self.dtype).replace("torch.", ""), "device": str(self.device),
                "hidden_size": self.hidden_size, "lora_target_pattern": self.lora_target_pattern}


# -- registry ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    """A registered model: adapter class (module:Class, imported lazily), default revision,
    LoRA target pattern, and notes. `path` is set for models built in this repository. A model
    whose adapter runs hub remote code checks the opt-in itself, in its `load`."""

    adapter: str
    revision: str | None
    lora_pattern: str
    notes: str
    path: Path | None = None

    @property
    def adapter_class(self) -> type[LALMAdapter]:
        module, name = self.adapter.split(":")
        return getattr(importlib.import_module(f"rrs.models.{module}"), name)


REGISTRY: dict[str, ModelSpec] = {
    "mini-lalm": ModelSpec(
        "qwen2_audio:Qwen2AudioAdapter", None, QWEN2_LLM_LORA_PATTERN,
        "the project's tiny Qwen2-Audio (rrs/mini/model/, built by rrs-build-mini)", path=MINI_MODEL_DIR),
    "Qwen/Qwen2-Audio-7B-Instruct": ModelSpec(
        "qwen2_audio:Qwen2AudioAdapter", None, QWEN2_LLM_LORA_PATTERN,
        "Qwen2-Audio-7B-Instruct, transformers-native"),
    "Qwen/Qwen2.5-Omni-7B": ModelSpec(
        "qwen25_omni:Qwen25OmniAdapter", None, QWEN2_LLM_LORA_PATTERN,
        "thinker only (text output); the paper's released code targets this model"),
    "Qwen/Qwen2.5-Omni-3B": ModelSpec(
        "qwen25_omni:Qwen25OmniAdapter", None, QWEN2_LLM_LORA_PATTERN,
        "thinker only (text output); the colab profile's stand-in for the 7B"),
    "Qwen/Qwen-Audio-Chat": ModelSpec(
        "qwen_audio_chat:QwenAudioChatAdapter", None, QWEN1_LLM_LORA_PATTERN,
        "remote code for transformers 4.x: needs trust_remote_code=True, a reviewed commit "
        "passed as revision=, and a separate transformers<4.50 environment"),
}

# config.json model_type -> adapter, for local folders.
MODEL_TYPES = {
    "qwen2_audio": "qwen2_audio:Qwen2AudioAdapter",
    "qwen2_5_omni": "qwen25_omni:Qwen25OmniAdapter",
    "qwen2_5_omni_thinker": "qwen25_omni:Qwen25OmniAdapter",
    "qwen": "qwen_audio_chat:QwenAudioChatAdapter",
}


def transformers_major() -> int:
    """The installed transformers' major version: the project runs on 5, Qwen-Audio-Chat's
    remote code only on 4."""
    # imported here: transformers replaces its module in sys.modules as it loads, so a module
    # bound at import time may not be the one a test patches
    import transformers

    return int(transformers.__version__.split(".")[0])


def _missing_weights_message(model_id: str, revision: str | None, err: Exception) -> str:
    rev = f", revision={revision!r}" if revision else ""
    return (f"The weights of {model_id!r} are not available on this machine ({type(err).__name__}: {err}). "
            f"Download them on a connected machine with `huggingface_hub.snapshot_download({model_id!r}{rev})` "
            "(or `huggingface-cli download`), copy the Hugging Face cache (HF_HOME) here, and run with "
            "HF_HUB_OFFLINE=1; or pass a local folder path to load_adapter.")


def _unknown_model(model_id_or_path: str) -> ValueError:
    return ValueError(f"unknown model {model_id_or_path!r}: not a registered id nor a local folder. "
                      f"Registered ids: {sorted(REGISTRY)}")


def mini_folder(model_id_or_path: str) -> Path | None:
    """The folder of the mini-LALM build that `model_id_or_path` names (the registered id, or
    a local folder whose config.json carries the mini-LALM marker); None for any other model.
    Raises `load_adapter`'s ValueError for a name that is neither registered nor a folder."""
    if model_id_or_path in REGISTRY:
        return REGISTRY[model_id_or_path].path
    folder = Path(model_id_or_path).expanduser()
    if not folder.is_dir():
        raise _unknown_model(model_id_or_path)
    from ..mini import MARKER

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # not a readable model folder: load_adapter says what is wrong with it
    return folder.resolve() if isinstance(config, dict) and config.get(MARKER) is True else None


def load_adapter(model_id_or_path: str, *, device: str = "cpu", dtype: str = "float32",
                 trust_remote_code: bool = False, revision: str | None = None,
                 local_files_only: bool | None = None) -> LALMAdapter:
    """Load a registered model id (see REGISTRY) or a local Hugging Face model folder.

    Local folders pick their adapter from config.json's model_type. `local_files_only=None`
    follows HF_HUB_OFFLINE. Remote-code models need trust_remote_code=True and a revision
    (their adapter's `load` checks both before anything is downloaded or run).
    """
    check_device(device)
    torch_dtype(dtype)
    if model_id_or_path in REGISTRY:
        spec = REGISTRY[model_id_or_path]
        model_id, revision = model_id_or_path, revision or spec.revision
        if spec.path is not None:
            if not (spec.path / "config.json").is_file():
                raise FileNotFoundError(f"{model_id!r} is not built yet: no {spec.path}/config.json. "
                                        "Build it with `rrs-build-mini` (rrs.mini.build).")
            from ..mini import verify_mini

            verify_mini(spec.path)  # every file against its recorded sha256: a damaged build never loads
            source = str(spec.path)
        else:
            source = model_id
        cls = spec.adapter_class
    elif Path(model_id_or_path).expanduser().is_dir():
        folder = Path(model_id_or_path).expanduser().resolve()
        config = folder / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"{folder} has no config.json; not a Hugging Face model folder")
        try:
            config_dict = json.loads(config.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{config}: unreadable config.json ({e})") from e
        if not isinstance(config_dict, dict):
            raise ValueError(f"{config}: config.json must hold a JSON object")
        from ..mini import MARKER, verify_mini

        if config_dict.get(MARKER) is True:
            verify_mini(folder)  # a mini-LALM build: complete, and its files match its build record
        model_type = config_dict.get("model_type")
        if model_type not in MODEL_TYPES:
            raise ValueError(f"{folder}: model_type {model_type!r} is not supported; "
                             f"supported: {sorted(MODEL_TYPES)}")
        module, name = MODEL_TYPES[model_type].split(":")
        cls = getattr(importlib.import_module(f"rrs.models.{module}"), name)
        model_id, source = str(folder), str(folder)
        local_files_only = True
    else:
        raise _unknown_model(model_id_or_path)

    if local_files_only is None:
        from huggingface_hub import constants

        local_files_only = bool(constants.HF_HUB_OFFLINE)
    from safetensors import SafetensorError

    try:
        adapter = cls.load(source, model_id=model_id, device=device, dtype=dtype, revision=revision,
                           local_files_only=local_files_only, trust_remote_code=trust_remote_code)
    except (OSError, SafetensorError) as err:
        if isinstance(err, ModelNotAvailableError):
            raise
        if Path(source).is_dir():  # a local folder: nothing to download, its files are the problem
            raise ModelNotAvailableError(f"{source}: the model folder cannot be loaded ({type(err).__name__}: "
                                         f"{err}); check that its weight files are complete") from err
        if source == model_id and isinstance(err, OSError):
            raise ModelNotAvailableError(_missing_weights_message(model_id, revision, err)) from err
        raise
    if not adapter.tokenizer.encode("How", add_special_tokens=False):  # no tokenizer files: an empty vocabulary
        raise ModelNotAvailableError(f"{source}: its tokenizer encodes no text (are the tokenizer files missing?)")
    return adapter

