"""Qwen2.5-Omni, thinker only (Qwen2_5OmniThinkerForConditionalGeneration): text output.

The system prompt is Qwen's default for Omni (the one the released RRS code uses with
Qwen2.5-Omni-7B). The talker (speech output) is never loaded. Needs transformers >= 5.21:
earlier 5.x releases lay the thinker out differently (text model at thinker.model, audio
tower beside it), which the adapter refuses with a clear error.

Processor. transformers' Qwen2_5OmniProcessor cannot be built without torchvision (its
video processor base class is only defined when torchvision is installed), and this
project does not depend on torchvision. So the adapter uses `OmniAudioTextProcessor`, the
text + audio half of Qwen2_5OmniProcessor: the model's own tokenizer, Whisper feature
extractor and chat template, and the same audio-token expansion (one <|AUDIO|> per
encoder output frame: ((L - 1) // 2 + 1 - 2) // 2 + 1 for L mel frames). A test checks it
against Qwen2_5OmniProcessor token for token when torchvision is importable, which it is not
in the project's environment: torchvision's wheels on PyPI are CUDA builds and do not load
beside the CPU build of torch that the lock installs here. It passed on 2026-12-02 in a
separate environment with torch 2.14.1 and torchvision 0.29.1 from PyPI (the command is in
the test's docstring), and failed there with the expansion above off by one.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import (AutoTokenizer, BatchFeature, Qwen2_5OmniThinkerConfig,
                          Qwen2_5OmniThinkerForConditionalGeneration, WhisperFeatureExtractor)
from transformers.utils import cached_file

from .base import QWEN2_LLM_LORA_PATTERN, LALMAdapter, torch_dtype, unwrap
from .qwen2_audio import whisper_feature_extractor

OMNI_SYSTEM_PROMPT = ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of "
                      "perceiving auditory and visual inputs, as well as generating text and speech.")

# The Qwen2.5-Omni chat template (hub chat_template.json).
OMNI_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}{% if add_audio_id %}Audio {{ audio_count.value }}: {% endif %}"
    "<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
OMNI_NAMED_TOKENS = {
    "audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>",
    "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
}
OMNI_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", *OMNI_NAMED_TOKENS.values())


def omni_audio_token_count(mel_frames: int) -> int:
    """Audio tokens for `mel_frames` real mel frames (Qwen2.5-Omni audio encoder lengths)."""
    return ((mel_frames - 1) // 2 + 1 - 2) // 2 + 1


class OmniAudioTextProcessor:
    """Text + audio processing of Qwen2_5OmniProcessor (see the module docstring)."""

    audio_token = "<|AUDIO|>"

    def __init__(self, tokenizer, feature_extractor: WhisperFeatureExtractor, chat_template: str):
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.chat_template = chat_template

    def apply_chat_template(self, conversations, tokenize=False, add_generation_prompt=True):
        if tokenize:
            raise NotImplementedError("render the text, then call the processor with the audio")
        return self.tokenizer.apply_chat_template(conversations, chat_template=self.chat_template,
                                                  tokenize=False, add_generation_prompt=add_generation_prompt)

    def __call__(self, text: list[str], audio: list[np.ndarray] | None = None, return_tensors="pt",
                 padding=True, sampling_rate: int = 16_000) -> BatchFeature:
        text = [text] if isinstance(text, str) else list(text)
        n_placeholders = sum(t.count(self.audio_token) for t in text)
        audio = list(audio or [])
        if n_placeholders != len(audio):
            raise ValueError(f"{n_placeholders} {self.audio_token} placeholders but {len(audio)} audios")
        data = {}
        if audio:
            feats = self.feature_extractor(audio, sampling_rate=sampling_rate, return_attention_mask=True,
                                           padding="max_length", return_tensors="pt")
            counts = iter(omni_audio_token_count(int(n)) for n in feats["attention_mask"].sum(-1))
            expanded = []
            for t in text:  # expand the placeholders in order: the i-th audio goes to the i-th one
                pieces = t.split(self.audio_token)
                expanded.append(pieces[0] + "".join(self.audio_token * next(counts) + p for p in pieces[1:]))
            text = expanded
            data = {"input_features": feats["input_features"], "feature_attention_mask": feats["attention_mask"]}
        enc = self.tokenizer(text, padding=padding, return_tensors=return_tensors)
        return BatchFeature({**enc, **data})

    def save_pretrained(self, path):
        self.tokenizer.chat_template = self.chat_template
        self.tokenizer.save_pretrained(path)
        self.feature_extractor.save_pretrained(path)

    @classmethod
    def from_pretrained(cls, path_or_id, **kw):
        tokenizer = AutoTokenizer.from_pretrained(path_or_id, **kw)
        feature_extractor = WhisperFeatureExtractor.from_pretrained(path_or_id, **kw)
        # the processor's own template first, as transformers' Qwen2_5OmniProcessor (the authors'
        # code) reads it; the hub repo keeps it in chat_template.json
        try:
            template = json.loads(Path(cached_file(path_or_id, "chat_template.json", **kw)).read_text())["chat_template"]
        except (OSError, KeyError, TypeError, ValueError):
            template = tokenizer.chat_template or OMNI_CHAT_TEMPLATE
        processor = cls(tokenizer, feature_extractor, template)
        processor.check_template(path_or_id)
        return processor

    def check_template(self, source) -> None:
        """Refuse a chat template that does not place a spoken question as Qwen2.5-Omni expects
        (one audio placeholder between its markers, then the text, then the assistant's turn)."""
        probe = [{"role": "system", "content": "S"},  # as LALMAdapter.conversation writes one
                 {"role": "user", "content": [{"type": "audio", "audio_url": "<waveform>"}, {"type": "text", "text": "Q?"}]}]
        text = self.apply_chat_template([probe])[0]
        want = "<|audio_bos|><|AUDIO|><|audio_eos|>Q?<|im_end|>\n<|im_start|>assistant\n"
        if want not in text:
            raise ValueError(f"{source}: its chat template does not render a spoken question as Qwen2.5-Omni's "
                             f"does (expected ...{want!r}; got {text[-160:]!r})")


def build_qwen25_omni_processor(tokenizer, *, window_seconds: float = 30, num_mel_bins: int = 128) -> OmniAudioTextProcessor:
    """An OmniAudioTextProcessor for `tokenizer` (must hold OMNI_SPECIAL_TOKENS)."""
    missing = [t for t in OMNI_SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        raise ValueError(f"tokenizer lacks the Qwen2.5-Omni special tokens {missing}")
    tokenizer.padding_side = "left"
    return OmniAudioTextProcessor(tokenizer, whisper_feature_extractor(window_seconds, num_mel_bins), OMNI_CHAT_TEMPLATE)


def tiny_qwen25_omni_thinker_config(vocab_size: int, *, token_ids: dict[str, int], num_mel_bins: int = 80,
                                    hidden_size: int = 32, num_layers: int = 2, num_heads: int = 4,
                                    num_kv_heads: int = 2, intermediate_size: int = 64,
                                    audio_d_model: int = 32, audio_layers: int = 1, audio_heads: int = 2,
                                    pad_token_id: int | None = None) -> Qwen2_5OmniThinkerConfig:
    """A small thinker config; `token_ids` maps the OMNI_NAMED_TOKENS keys to their ids."""
    head_dim = hidden_size // num_heads
    return Qwen2_5OmniThinkerConfig(
        audio_config=dict(d_model=audio_d_model, encoder_layers=audio_layers, encoder_attention_heads=audio_heads,
                          encoder_ffn_dim=2 * audio_d_model, num_mel_bins=num_mel_bins, max_source_positions=1500,
                          n_window=50, output_dim=hidden_size),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=hidden_size,
                           fullatt_block_indexes=[0], patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        text_config=dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                         max_position_embeddings=4096, tie_word_embeddings=False, pad_token_id=pad_token_id,
                         rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                                          "mrope_section": [head_dim // 4, head_dim // 8, head_dim // 8]}),
        audio_token_index=token_ids["audio_token"], image_token_index=token_ids["image_token"],
        video_token_index=token_ids["video_token"], audio_start_token_id=token_ids["audio_bos_token"],
        audio_end_token_id=token_ids["audio_eos_token"], tie_word_embeddings=False,
        # not a declared field, but read by get_rope_index (the hub config.json has it too)
        vision_start_token_id=token_ids["vision_bos_token"], vision_end_token_id=token_ids["vision_eos_token"],
    )


class Qwen25OmniAdapter(LALMAdapter):
    lora_target_pattern = QWEN2_LLM_LORA_PATTERN
    system_prompt = OMNI_SYSTEM_PROMPT

    def __init__(self, model, processor, **kw):
        # transformers < 5.21 put the text model at thinker.model and the audio tower beside
        # it; h(x) and the LoRA pattern here need the later thinker.model.language_model.
        if not hasattr(unwrap(model).model, "language_model"):
            raise RuntimeError(f"transformers {transformers.__version__} lays out the Qwen2.5-Omni thinker the "
                               "pre-5.21 way (thinker.model is the text model); install transformers>=5.21")
        super().__init__(model, processor, **kw)

    @classmethod
    def load(cls, path_or_id, *, model_id, device="cpu", dtype="float32", revision=None,
             local_files_only=False, trust_remote_code=False):
        kw = dict(revision=revision, local_files_only=local_files_only)
        processor = OmniAudioTextProcessor.from_pretrained(path_or_id, **kw)
        model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
            path_or_id, dtype=torch_dtype(dtype), **kw, **({"device_map": device} if device != "cpu" else {}))
        return cls(model.to(device), processor, model_id=model_id, device=device, dtype=dtype, revision=revision)


def random_tiny_qwen25_omni(seed: int = 0, *, window_seconds: float = 2.0, vocab_size: int = 400, **config_kwargs):
    """(model, processor): a randomly initialised tiny Qwen2.5-Omni thinker, built offline."""
    from .qwen2_audio import DEFAULT_TINY_CORPUS, tiny_bpe_tokenizer

    tok = tiny_bpe_tokenizer(list(DEFAULT_TINY_CORPUS) * 4, vocab_size=vocab_size, special_tokens=OMNI_SPECIAL_TOKENS,
                             named_special_tokens=OMNI_NAMED_TOKENS)
    processor = build_qwen25_omni_processor(tok, window_seconds=window_seconds, num_mel_bins=80)
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in OMNI_NAMED_TOKENS.items()}
    config = tiny_qwen25_omni_thinker_config(len(tok), token_ids=ids, num_mel_bins=80, pad_token_id=tok.pad_token_id,
                                             **config_kwargs)
    torch.manual_seed(seed)
    model = Qwen2_5OmniThinkerForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    return model, processor
