"""The mini-LALM's tokenizer: byte-level BPE (Qwen style) trained on the training corpus only.

Built with `tokenizers` through rrs.models.qwen2_audio.tiny_bpe_tokenizer (the project's
one builder), with the Qwen2-Audio special tokens <|endoftext|> <|im_start|> <|im_end|>
<|audio_bos|> <|AUDIO|> <|audio_eos|>. Byte-level: any text encodes (unseen words fall
apart into sub-words / bytes), and "I" is always one token where a refusal starts (right
after "<|im_start|>assistant\\n"), which RRS needs (the LM-head row w_I).
"""
from __future__ import annotations

from typing import Iterable

from ..models.qwen2_audio import QWEN2_AUDIO_SPECIAL_TOKENS, tiny_bpe_tokenizer

REFUSAL_TOKEN = "I"


class TokenizerError(ValueError):
    """A tokenizer that the mini-LALM cannot use."""


def build_tokenizer(texts: Iterable[str], vocab_size: int = 2048):
    """Train the byte-level BPE on `texts` (the training corpus and templates only)."""
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise TokenizerError("no text to train the tokenizer on")
    tok = tiny_bpe_tokenizer(texts, vocab_size=vocab_size)
    check_tokenizer(tok)
    return tok


def check_tokenizer(tok) -> None:
    """Raise TokenizerError unless: every Qwen special token is one id; "I" is one token
    alone and at the start of an assistant turn; byte fallback reaches every character."""
    vocab = tok.get_vocab()
    for special in QWEN2_AUDIO_SPECIAL_TOKENS:
        if special not in vocab:
            raise TokenizerError(f"special token {special} missing from the vocabulary")
        if tok.encode(special, add_special_tokens=False) != [vocab[special]]:
            raise TokenizerError(f"special token {special} does not encode to its own id")
    i_ids = tok.encode(REFUSAL_TOKEN, add_special_tokens=False)
    if len(i_ids) != 1:
        raise TokenizerError(f"{REFUSAL_TOKEN!r} encodes to {i_ids}, not one token")
    turn = "<|im_start|>assistant\n"
    for refusal in ("I cannot help.", "I'm sorry.", "I won't."):
        ids = tok.encode(turn + refusal, add_special_tokens=False)
        head = tok.encode(turn, add_special_tokens=False)
        if ids[: len(head)] != head or ids[len(head)] != i_ids[0]:
            raise TokenizerError(f"{refusal!r} does not start with the token {REFUSAL_TOKEN!r} in an assistant turn")
    probe = "Zyxw qü 42 — ok?"
    if tok.decode(tok.encode(probe, add_special_tokens=False)) != probe:
        raise TokenizerError("the tokenizer does not round-trip arbitrary text (byte-level expected)")
