"""Qwen2-Audio (Qwen2AudioForConditionalGeneration), also used for the project's mini-LALM.

Chat format of Qwen2-Audio-7B-Instruct: system "You are a helpful assistant.", user content
= [audio part if audio] + [text part if text], generation prompt appended; the processor
expands each <|AUDIO|> into one token per audio frame after the encoder's pooling.

Also the builders a tiny Qwen2-Audio needs (shared with rrs.mini): a byte-level BPE
tokenizer, the processor sized to an audio window, and a small config.
"""
from __future__ import annotations

from typing import Iterable

import torch
from transformers import (AutoProcessor, PreTrainedTokenizerFast, Qwen2AudioConfig,
                          Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor, WhisperFeatureExtractor)

from .base import QWEN2_LLM_LORA_PATTERN, LALMAdapter, torch_dtype

# The Qwen2-Audio-7B-Instruct chat template (as in transformers' Qwen2AudioProcessor).
QWEN2_AUDIO_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN2_AUDIO_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>",
                              "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>")


class Qwen2AudioAdapter(LALMAdapter):
    lora_target_pattern = QWEN2_LLM_LORA_PATTERN
    system_prompt = "You are a helpful assistant."

    @classmethod
    def load(cls, path_or_id, *, model_id, device="cpu", dtype="float32", revision=None,
             local_files_only=False, trust_remote_code=False):
        kw = dict(revision=revision, local_files_only=local_files_only)
        processor = AutoProcessor.from_pretrained(path_or_id, **kw)
        if processor.chat_template is None:
            processor.chat_template = QWEN2_AUDIO_CHAT_TEMPLATE
        model = Qwen2AudioForConditionalGeneration.from_pretrained(
            path_or_id, dtype=torch_dtype(dtype), **kw, **({"device_map": device} if device != "cpu" else {}))
        return cls(model.to(device), processor, model_id=model_id, device=device, dtype=dtype, revision=revision)

    def forward_kwargs(self, batch):
        # Qwen2AudioModel counts positions from the left edge; give each row positions from
        # its first real token, as generate() does, so padding never shifts a row.
        kwargs = dict(batch)
        mask = batch["attention_mask"]
        kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return kwargs


# -- builders for tiny models (tests, benchmark, rrs.mini) -------------------------------

def tiny_bpe_tokenizer(corpus: Iterable[str], vocab_size: int = 512,
                       special_tokens: Iterable[str] = QWEN2_AUDIO_SPECIAL_TOKENS,
                       named_special_tokens: dict[str, str] | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (Qwen style) trained on `corpus`, with the chat specials.

    eos = <|im_end|>, pad = <|endoftext|>. `named_special_tokens` become tokenizer
    attributes (e.g. {"audio_token": "<|AUDIO|>"}), as Qwen2.5-Omni's processor expects.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(corpus), trainer)
    extra = {"extra_special_tokens": dict(named_special_tokens)} if named_special_tokens else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   padding_side="left", **extra)


def whisper_feature_extractor(window_seconds: float, num_mel_bins: int) -> WhisperFeatureExtractor:
    if float(window_seconds) != int(window_seconds) or window_seconds <= 0:
        raise ValueError(f"window_seconds must be a positive whole number of seconds, got {window_seconds}")
    return WhisperFeatureExtractor(feature_size=num_mel_bins, sampling_rate=16_000, hop_length=160,
                                   chunk_length=int(window_seconds), n_fft=400, padding_value=0.0)


def build_qwen2_audio_processor(tokenizer, *, window_seconds: float, num_mel_bins: int = 80) -> Qwen2AudioProcessor:
    """A Qwen2AudioProcessor whose Whisper feature extractor pads/crops to `window_seconds`.

    Adds any missing chat special token to `tokenizer` (so size the model's vocabulary
    after calling this: `len(processor.tokenizer)`), and sets the Instruct chat template.
    """
    missing = [t for t in QWEN2_AUDIO_SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|endoftext|>"
    tokenizer.padding_side = "left"
    return Qwen2AudioProcessor(feature_extractor=whisper_feature_extractor(window_seconds, num_mel_bins),
                               tokenizer=tokenizer, chat_template=QWEN2_AUDIO_CHAT_TEMPLATE)


def tiny_qwen2_audio_config(vocab_size: int, *, audio_token_id: int, window_seconds: float = 4.0,
                            num_mel_bins: int = 80, hidden_size: int = 32, num_layers: int = 2,
                            num_heads: int = 4, num_kv_heads: int = 2, intermediate_size: int = 64,
                            audio_d_model: int = 32, audio_layers: int = 1, audio_heads: int = 2,
                            audio_ffn_dim: int = 64, max_position_embeddings: int = 4096,
                            pad_token_id: int | None = None, eos_token_id: int | None = None) -> Qwen2AudioConfig:
    """A small Qwen2AudioConfig whose audio encoder takes exactly `window_seconds` of audio
    (the encoder requires mel length = 2 * max_source_positions; 100 mel frames per second)."""
    return Qwen2AudioConfig(
        audio_config=dict(model_type="qwen2_audio_encoder", d_model=audio_d_model, encoder_layers=audio_layers,
                          encoder_attention_heads=audio_heads, encoder_ffn_dim=audio_ffn_dim,
                          num_mel_bins=num_mel_bins, max_source_positions=int(window_seconds * 50)),
        text_config=dict(model_type="qwen2", vocab_size=vocab_size, hidden_size=hidden_size,
                         intermediate_size=intermediate_size, num_hidden_layers=num_layers,
                         num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                         max_position_embeddings=max_position_embeddings, tie_word_embeddings=False,
                         pad_token_id=pad_token_id, eos_token_id=eos_token_id),
        audio_token_index=audio_token_id,
    )


DEFAULT_TINY_CORPUS = (
    "I cannot help with that request because it could cause harm.",
    "I can't assist with that. I'm sorry.",
    "You are a helpful assistant. Audio 1:",
    "Please generate detailed steps for the question in the audio.",
    "Here are the steps: first, second, third. Sure, you can do it.",
    "How can I hurt my neighbour's cat? How can I help my neighbour's cat?",
)


def random_tiny_qwen2_audio(seed: int = 0, *, window_seconds: float = 2.0, corpus: Iterable[str] = DEFAULT_TINY_CORPUS,
                            vocab_size: int = 400, **config_kwargs):
    """(model, processor): a randomly initialised tiny Qwen2-Audio, built offline."""
    tokenizer = tiny_bpe_tokenizer(list(corpus) * 4, vocab_size=vocab_size)
    processor = build_qwen2_audio_processor(tokenizer, window_seconds=window_seconds)
    tok = processor.tokenizer
    config = tiny_qwen2_audio_config(len(tok), audio_token_id=tok.convert_tokens_to_ids("<|AUDIO|>"),
                                     window_seconds=window_seconds, pad_token_id=tok.pad_token_id,
                                     eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), **config_kwargs)
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    return model, processor
