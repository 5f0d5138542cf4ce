"""Build the mini-LALM: a tiny Qwen2-Audio trained from scratch on the CPU.

    python -m rrs.mini.build [--out DIR] [--seed 0] [--minutes N] [--threads 2]

Architecture: transformers' Qwen2AudioForConditionalGeneration (Whisper-style audio
encoder -> linear projector -> Qwen2 decoder) with a tiny config (BuildConfig), an 8 s
audio window (rrs.profiles.MINI.max_audio_seconds) and a byte-level BPE tokenizer trained
on the training corpus. Stages, as real LALMs are made (OURS):

0. hear: the audio encoder alone learns eSpeak NG's phonemes of every clip (CTC through a
   training-only head, not saved);
1. text stage (the "aligned LLM"): harmful questions -> a refusal, benign questions -> the
   echo answer, any question + the paper's refusal instruction -> a refusal;
1b. words: the encoder (its positional embeddings included) and the projector alone learn
   which text token is spoken under each audio token (eSpeak NG's word timings) and to map
   it onto that token's input embedding, in two cosine cycles (the decoder is not trained;
   the word head is training-only and not saved);
   stages 0 and 1b draw clips of similar length together (length_batch): half the cost;
2. audio stage (the "audio alignment", no safety data): transcription of spoken questions
   and synthetic sentences (harmful ones included: plain ASR, no response), spoken BENIGN
   questions -> the echo answer (audio-text and audio-only), spoken BENIGN questions + the
   refusal instruction -> a refusal; text data of stage 1 stays mixed in so the text path
   keeps its alignment. Each step's clips come from one length quantile (Sampler): the stage
   costs a fifth less. No spoken harmful question ever gets a refusal or an answer target:
   the audio gap of the paper comes from this, not from a rule.

Corpus: only split == 'train' rows of the paper pairs plus text generated from word lists
(rrs.mini.corpus); generated text equal to a held-out question is dropped first.

Robustness: the model is built in a temporary folder beside `--out` and renamed into place
at the end (a crash never leaves a loadable half-model); training state is checkpointed
under rrs.paths.cache_dir()/mini-build/<run key>/ and a rerun resumes from it; speech
features are cached there too.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import platform
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import io as rio
from ..modes import REFUSAL_INSTRUCTION, ModelInput
from ..paths import REPO_ROOT, cache_dir
from . import corpus as C
from .speech import BUILD_SPEECH, MelFeatures, frame_token_labels, log_mel, phoneme_string, synthesize_words

DEFAULT_OUT = REPO_ROOT / "rrs" / "mini" / "model"
RECORD = "build_record.json"
MANIFEST = "training_corpus.json.gz"
MARKER = "rrs_mini_lalm"
FORMAT = 1


@dataclass(frozen=True)
class BuildConfig:
    seed: int = 0
    # the split that defines what may be trained on (rrs.data.load_questions)
    split_seed: int = 0
    test_fraction: float = 0.2
    window_seconds: float = 8.0
    # model
    vocab_size: int = 2048
    audio_d_model: int = 128
    audio_layers: int = 2
    audio_heads: int = 4
    audio_ffn_dim: int = 512
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 512
    # corpus
    synthetic_per_family: int = 700
    paper_spoken_variants: int = 2     # each train question spoken by this many voice/rate draws
    spoken_synthetic_benign: int = 1500
    spoken_synthetic_harmful: int = 600
    voices: tuple = ("en-us", "en", "en-us+f3", "en+m3")
    rates: tuple = (150, 170, 190)
    # training
    text_steps: int = 500
    text_batch: int = 64
    mixed_steps: int = 400
    audio_batch: int = 24
    mixed_text_batch: int = 32
    lr: float = 2e-3
    warmup: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.05
    attention_dropout: float = 0.1
    max_grad_norm: float = 1.0
    mixed_llm_lr_scale: float = 0.5    # the LLM's learning rate in the audio stage, relative
    # Hearing, in two encoder-only stages. Stage "hear" learns eSpeak NG's phonemes (CTC),
    # which a small encoder learns fast. Stage "words" (after the text stage, so that the
    # decoder's token embeddings exist) names the text token spoken under every audio token,
    # using eSpeak NG's own word timings, and pulls the projected audio token onto that
    # token's input embedding: the decoder then reads speech much as it reads text. Without
    # it (phoneme CTC alone) spoken harmful and benign questions were inseparable in h(x)
    # (held-out probe AUC 0.50-0.58); see the README's "Current state".
    ctc_units: str = "phonemes"        # CTC targets: eSpeak NG "phonemes" or transcript BPE "tokens"
    hear_steps: int = 300              # stage 0: the encoder alone learns the CTC units
    hear_batch: int = 48
    # stage "words": frame-level word targets (encoder + projector), in cosine cycles with a
    # warm restart (fresh optimiser moments, new warm-up), as in the throwaway recipe that
    # first worked. The cycles alone are not what matters: with frozen positions (below) two
    # cycles ended at a word loss of 1.51, one 2,000-step cycle at 1.45
    word_cycles: tuple = (400, 1600)
    # ... and also trains the encoder's positional embeddings, which transformers freezes
    # (Whisper's are fixed sinusoids). Measured: with them frozen the word loss ended at 1.5
    # (two builds) and RRS then moved no spoken test question; trained, 0.93-1.07, and it did
    word_positions: bool = True
    word_batch: int = 48
    word_weight: float = 1.0           # the word loss, kept as an auxiliary loss in the mixed stage
    # encoder-only stages draw clips of similar length together (length_batch): a random batch
    # of 48 pads to about twice its mean clip length, and the encoder's cost grows with it
    length_chunk: int = 16             # batches per sorted chunk; 0: uniform random batches
    # the audio stage draws each step's clips from one of this many length quantiles (the
    # quantile of a uniformly drawn clip), so every clip stays equally likely while a batch
    # of 24 pads to 1.11 times its mean length instead of 1.80; 0: uniform draws
    mixed_length_buckets: int = 8
    paper_share: float = 0.4           # share of text questions drawn from the paper's train rows
    paper_surface_noise: bool = True   # lower-case / drop the final "?" of some paper questions
    prefix_tokens: int = 2             # a "prefix" example trains only this many response tokens
    full_refusal_share: float = 0.25   # refusals trained in full (the rest: prefix only)
    full_answer_share: float = 0.4     # text echo answers trained in full
    text_mix: tuple = (("harmful_refuse", 0.34), ("benign_answer", 0.46), ("instruction_refuse", 0.20))
    audio_mix: tuple = (("asr", 0.40), ("audio_text_answer", 0.20), ("audio_only_answer", 0.16),
                        ("audio_text_instruction", 0.12), ("audio_only_instruction", 0.12))
    checkpoint_every: int = 100
    # development only (the committed build uses 0): hold out this share of train groups
    # (never trained on) to measure generalisation without looking at the test split
    val_fraction: float = 0.0


# ----------------------------------------------------------------------------- corpus

@dataclass
class Clip:
    text: str
    label: str
    source: str
    voice: str
    rate: int


@dataclass
class Corpus:
    questions: dict                 # label -> source kind ('paper'|'synthetic') -> [Question]
    clips: list                     # [Clip]
    dropped: int                    # generated texts dropped as equal to a held-out question
    val: list = field(default_factory=list)  # held-out train questions (development only)

    def texts(self) -> list[str]:
        """Every text the model is trained on (tokenizer corpus, manifest)."""
        out = [C.SYSTEM_PROMPT, REFUSAL_INSTRUCTION, *C.REFUSALS, *C.ANSWER_PROMPTS, *C.ASR_PROMPTS]
        for by_src in self.questions.values():
            for qs in by_src.values():
                for q in qs:
                    out += [q.text, C.answer_for(q.text)]
        out += [c.text for c in self.clips] + [C.transcript_for(c.text) for c in self.clips]
        return list(dict.fromkeys(out))

    def manifest(self) -> dict:
        qs = sorted({(q.text, q.label, q.source) for by_src in self.questions.values()
                     for lst in by_src.values() for q in lst})
        clips = sorted({(c.text, c.label, c.voice, c.rate) for c in self.clips})
        m = {"questions": [list(q) for q in qs], "spoken": [list(c) for c in clips],
             "prompts": {"answer": list(C.ANSWER_PROMPTS), "asr": list(C.ASR_PROMPTS),
                         "system": C.SYSTEM_PROMPT, "refusal_instruction": REFUSAL_INSTRUCTION},
             "responses": {"refusals": list(C.REFUSALS), "answer_prefix": C.ANSWER_PREFIX},
             "dropped_as_held_out": self.dropped}
        m["checksum"] = rio.sha256_json({k: v for k, v in m.items()})
        return m


def split_table(cfg: BuildConfig):
    from ..data import load_questions

    return load_questions(test_fraction=cfg.test_fraction, seed=cfg.split_seed)


def split_checksum(df) -> str:
    rows = sorted(zip(df["id"].astype(str), df["label"].astype(str), df["split"].astype(str)))
    return rio.sha256_json(rows)


def build_corpus(cfg: BuildConfig, df) -> Corpus:
    """The training corpus from the split table `df` (only its train rows are read for
    content; the normalised texts of the other rows serve only to drop collisions)."""
    train = df[df["split"] == "train"]
    forbidden = set(df.loc[df["split"] != "train", "norm"])
    val: list = []
    if cfg.val_fraction > 0:
        groups = sorted(set(train["group"]))
        rng = np.random.default_rng(1000 + cfg.seed)
        held = set(rng.choice(groups, size=round(cfg.val_fraction * len(groups)), replace=False))
        val = C.paper_train_questions(train[train["group"].isin(held)])
        forbidden |= set(train.loc[train["group"].isin(held), "norm"])
        train = train[~train["group"].isin(held)]
    paper = C.paper_train_questions(train)
    synthetic, dropped = C.decontaminate(C.synthetic_questions(cfg.seed, cfg.synthetic_per_family), forbidden)
    questions = {lab: {"paper": [q for q in paper if q.label == lab],
                       "synthetic": [q for q in synthetic if q.label == lab]} for lab in ("harmful", "benign")}
    rng = random.Random(f"mini-clips-{cfg.seed}")
    clips = []
    for q in paper:
        for _ in range(cfg.paper_spoken_variants):
            clips.append(Clip(q.text, q.label, "paper", *C.spoken_variants(rng, cfg.voices, cfg.rates)))
    for lab, n in (("benign", cfg.spoken_synthetic_benign), ("harmful", cfg.spoken_synthetic_harmful)):
        pool = questions[lab]["synthetic"]
        for q in rng.sample(pool, min(n, len(pool))):
            clips.append(Clip(q.text, q.label, "synthetic", *C.spoken_variants(rng, cfg.voices, cfg.rates)))
    return Corpus(questions, clips, len(dropped), val)


# ----------------------------------------------------------------------------- speech

def clip_features(corpus: Corpus, feature_extractor, cache: Path | None, progress: bool = True) -> MelFeatures:
    """Speak every clip (eSpeak NG) and compute its cropped log-mel features (cached)."""
    key = rio.sha256_json([[c.text, c.voice, c.rate] for c in corpus.clips]
                          + [feature_extractor.to_dict()["n_samples"], feature_extractor.feature_size, BUILD_SPEECH,
                             "word-timings"])[:16]
    path = cache / f"features-{key}.pt" if cache else None
    if path is not None and path.exists():
        try:
            d = torch.load(path, weights_only=False)
            return MelFeatures(d["crops"], d["lengths"], d["pads"], d["window_frames"], d["words"])
        except Exception:  # noqa: BLE001 - a damaged cache is rebuilt
            path.unlink(missing_ok=True)
    max_samples = feature_extractor.n_samples
    wavs, words = [], []
    t0 = time.time()
    for i, c in enumerate(corpus.clips):
        w, timing = synthesize_words(c.text, c.voice, c.rate)
        for fallback in (220, 260, 300):  # as rrs.audio.speak_questions: faster until it fits
            if len(w) <= max_samples:
                break
            w, timing = synthesize_words(c.text, c.voice, fallback)
            c.rate = fallback
        if len(w) > max_samples:
            raise ValueError(f"{c.text!r} does not fit the {max_samples / 16000:g} s window even at 300 wpm")
        wavs.append(w)
        words.append(timing)
        if progress and (i + 1) % 1000 == 0:
            print(f"[mini] spoke {i + 1}/{len(corpus.clips)} clips ({time.time() - t0:.0f} s)", flush=True)
    feats = log_mel(wavs, feature_extractor)
    feats.words = words
    if path is not None:
        with rio.atomic_path(path) as tmp:
            torch.save({"crops": feats.crops, "lengths": feats.lengths, "pads": feats.pads,
                        "window_frames": feats.window_frames, "words": words}, tmp)
    return feats


# ----------------------------------------------------------------------------- model

def render_chat(text: str | None, audio: bool, response: str) -> str:
    """Approximately the chat text of one example (for tokenizer training only: the real
    template is applied by the processor)."""
    user = ("Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n" if audio else "") + (text or "")
    return (f"<|im_start|>system\n{C.SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            f"<|im_start|>assistant\n{response}<|im_end|>")


def tokenizer_corpus(cfg: BuildConfig, corpus: Corpus, n_text: int = 6000, n_audio: int = 3000) -> list[str]:
    """What the BPE is trained on: every training text once, plus a sample of the training
    stream rendered as chats, so that frequent words (template, prompts, responses) become
    single tokens and sequences stay short."""
    sampler = Sampler(cfg, corpus)
    rng = np.random.default_rng([cfg.seed, 99])
    texts = corpus.texts()
    texts += [render_chat(e[0], False, e[3]) for e in sampler.text_examples(rng, n_text)]
    texts += [render_chat(e[0], True, e[3]) for e in sampler.audio_examples(rng, n_audio)]
    return texts


def make_processor_and_model(cfg: BuildConfig, texts: list[str]):
    from transformers import Qwen2AudioForConditionalGeneration

    from ..models.qwen2_audio import build_qwen2_audio_processor, tiny_qwen2_audio_config
    from .tokenizer import build_tokenizer, check_tokenizer

    tok = build_tokenizer(texts, vocab_size=cfg.vocab_size)
    processor = build_qwen2_audio_processor(tok, window_seconds=cfg.window_seconds, num_mel_bins=80)
    tok = processor.tokenizer
    check_tokenizer(tok)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    config = tiny_qwen2_audio_config(
        len(tok), audio_token_id=tok.convert_tokens_to_ids("<|AUDIO|>"), window_seconds=cfg.window_seconds,
        num_mel_bins=80, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
        num_kv_heads=cfg.num_kv_heads, intermediate_size=cfg.intermediate_size,
        audio_d_model=cfg.audio_d_model, audio_layers=cfg.audio_layers, audio_heads=cfg.audio_heads,
        audio_ffn_dim=cfg.audio_ffn_dim, max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id, eos_token_id=im_end)
    config.text_config.attention_dropout = cfg.attention_dropout
    config.audio_config.attention_dropout = cfg.attention_dropout
    setattr(config, MARKER, True)
    torch.manual_seed(cfg.seed)
    model = Qwen2AudioForConditionalGeneration(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = im_end
    model.generation_config.bos_token_id = None
    return processor, model


class Batcher:
    """Token ids exactly as the adapter's `prepare` builds them (same chat template, one
    <|AUDIO|> per audio frame after pooling), response + <|im_end|> as labels."""

    def __init__(self, processor, model):
        from ..models.qwen2_audio import Qwen2AudioAdapter

        self.adapter = Qwen2AudioAdapter(model, processor, model_id="mini-lalm-build")
        self.tok = processor.tokenizer
        self.audio_id = self.tok.convert_tokens_to_ids("<|AUDIO|>")
        self.im_end = self.tok.convert_tokens_to_ids("<|im_end|>")
        self.pad = self.tok.pad_token_id
        self._prompt_cache: dict = {}
        self._resp_cache: dict = {}
        self.clip_units = None  # set by the build: clip index -> CTC target ids
        self.clip_words = None  # set by the build: clip index -> text token per audio token
        self.n_units = model.config.text_config.vocab_size  # CTC classes (tokens), blank excluded

    def prompt_ids(self, text: str | None, audio: bool, mode: str) -> list[int]:
        key = (text, audio, mode)
        if key not in self._prompt_cache:
            x = ModelInput(text=text, audio=np.zeros(1, np.float32) if audio else None, mode=mode)
            chat = self.adapter.chat_texts([x])[0]
            self._prompt_cache[key] = self.tok.encode(chat, add_special_tokens=False)
        return self._prompt_cache[key]

    def response_ids(self, response: str) -> list[int]:
        if response not in self._resp_cache:
            self._resp_cache[response] = self.tok.encode(response, add_special_tokens=False) + [self.im_end]
        return self._resp_cache[response]

    def collate(self, examples, feats: MelFeatures | None = None, frames: int | None = None) -> dict:
        """examples: (text | None, clip index | None, mode, response[, keep]). Right padded.

        `keep` = k trains only the first k response tokens (no end of turn): a prefix of
        a valid conversation, cheap, and all the refusal decision needs."""
        rows, labels = [], []
        clip_idx = [e[1] for e in examples if e[1] is not None]
        n_audio = {}
        if clip_idx:
            for i in clip_idx:
                n_audio[i] = _audio_tokens(int(feats.lengths[i]))
        for text, clip, mode, response, *rest in examples:
            keep = rest[0] if rest else None
            p = self.prompt_ids(text, clip is not None, mode)
            if clip is not None:
                k = p.index(self.audio_id)
                p = p[:k] + [self.audio_id] * n_audio[clip] + p[k + 1:]
            r = self.response_ids(response)
            if keep is not None:
                r = r[:keep]
            rows.append(p + r)
            labels.append([-100] * len(p) + r)
        L = max(len(r) for r in rows)
        ids = torch.full((len(rows), L), self.pad, dtype=torch.long)
        lab = torch.full((len(rows), L), -100, dtype=torch.long)
        att = torch.zeros((len(rows), L), dtype=torch.long)
        for b, (r, l) in enumerate(zip(rows, labels)):
            ids[b, : len(r)] = torch.tensor(r)
            lab[b, : len(l)] = torch.tensor(l)
            att[b, : len(r)] = 1
        out = {"input_ids": ids, "attention_mask": att, "labels": lab}
        if clip_idx:
            out["input_features"], out["feature_attention_mask"] = feats.batch(clip_idx, frames)
            if self.clip_units is not None:
                out["ctc_targets"] = [self.clip_units[i] for i in clip_idx]
            if self.clip_words is not None:
                out["word_targets"] = [self.clip_words[i] for i in clip_idx]
        return out


def encode_audio(model, input_features, feature_attention_mask, return_encoder: bool = False):
    """Projected audio embeddings of the valid frames, concatenated over the batch: the
    computation of Qwen2AudioModel.forward, but on as many mel frames as the batch needs
    (the encoder insists on the full window; masking makes the valid outputs identical).
    With return_encoder, also (encoder output [B, T, d], valid lengths [B])."""
    from transformers.masking_utils import create_bidirectional_mask

    tower = model.model.audio_tower
    lengths = feature_attention_mask.sum(-1)
    l1, lout = tower._get_feat_extract_output_lengths(lengths)
    x = F.gelu(tower.conv1(input_features))
    x = F.gelu(tower.conv2(x)).permute(0, 2, 1)
    x = x + tower.embed_positions.weight[: x.shape[1]]
    mask2d = (torch.arange(x.shape[1])[None, :] < l1[:, None]).long()
    mask = create_bidirectional_mask(config=tower.config, inputs_embeds=x, attention_mask=mask2d)
    for layer in tower.layers:
        x = layer(x, mask)
    x = tower.avg_pooler(x.permute(0, 2, 1)).permute(0, 2, 1)
    x = tower.layer_norm(x)
    a = model.model.multi_modal_projector(x)
    valid = torch.arange(a.shape[1])[None, :] < lout[:, None]
    return (a[valid], x, lout) if return_encoder else a[valid]


def ctc_targets(batcher: "Batcher", corpus: Corpus, units: str) -> tuple[list, int]:
    """CTC target ids of every clip and the size of the unit inventory (blank excluded)."""
    if units == "tokens":
        return ([batcher.response_ids(C.transcript_for(c.text))[:-1] for c in corpus.clips],
                batcher.n_units)
    if units != "phonemes":
        raise ValueError(f"ctc_units must be 'phonemes' or 'tokens', not {units!r}")
    cache: dict = {}
    strings = [cache.setdefault(c.text, phoneme_string(c.text)) for c in corpus.clips]
    symbols = {ch: i for i, ch in enumerate(sorted(set("".join(strings))))}
    return [[symbols[ch] for ch in s] for s in strings], len(symbols)


def word_targets(tokenizer, corpus: Corpus, feats: MelFeatures) -> list[np.ndarray]:
    """Per clip: the text token spoken under each of its audio tokens (-100: none)."""
    out = []
    for i, c in enumerate(corpus.clips):
        n_frames = _audio_tokens(int(feats.lengths[i]))
        out.append(frame_token_labels(c.text, feats.words[i], n_frames, tokenizer,
                                      duration_ms=10.0 * int(feats.lengths[i])))
    return out


def length_batch(lengths: np.ndarray, batch: int, chunk: int, seed: int, stage: int, step: int) -> np.ndarray:
    """Clip indices of batch `step` of an encoder-only stage. Every epoch is a seeded
    permutation of all clips, cut into chunks of `chunk` batches; each chunk is sorted by
    length and cut into batches, and the epoch's batches are shuffled. So every clip is
    seen once per epoch and a batch pads little (chunk 0: `batch` uniform draws)."""
    n = len(lengths)
    if chunk <= 0:
        return np.random.default_rng([seed, stage, step]).integers(n, size=batch)
    per_epoch = n // batch
    epoch, k = divmod(step, per_epoch)
    rng = np.random.default_rng([seed, stage, 1_000_000 + epoch])
    perm = rng.permutation(n)[: per_epoch * batch]
    size = chunk * batch
    batches = []
    for c in range(0, len(perm), size):
        part = perm[c: c + size]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[b: b + batch] for b in range(0, len(part) - batch + 1, batch)]
    return batches[rng.permutation(len(batches))[k]]


def _audio_tokens(mel_frames: int) -> int:
    """Audio tokens of a clip of `mel_frames` valid frames (the encoder's conv + pooling)."""
    return ((mel_frames - 1) // 2 + 1 - 2) // 2 + 1


def word_loss(model, word_head, enc, lout, targets):
    """Stage "words": cross-entropy of the word head on every labelled audio token, plus
    the distance of the projected audio token to the spoken token's input embedding
    (relative to the embeddings' variance; the embeddings are targets, not trained here)."""
    valid = torch.arange(enc.shape[1])[None, :] < lout[:, None]
    y = torch.from_numpy(np.concatenate([t[: int(n)] for t, n in zip(targets, lout)]))
    e = enc[valid][y >= 0]
    y = y[y >= 0]
    emb = model.model.get_input_embeddings().weight.detach()
    mse = ((model.model.multi_modal_projector(e) - emb[y]) ** 2).mean() / emb.var()
    return F.cross_entropy(word_head(e).float(), y) + mse


def encoder_ctc(ctc_head, enc, lout, targets):
    """CTC of the encoder output [B, T, d] (valid lengths `lout`) against the clips' unit
    ids, through the training-only head whose last class is the blank."""
    logp = F.log_softmax(ctc_head(enc).float(), dim=-1).transpose(0, 1)  # [T, B, V+1]
    return F.ctc_loss(logp, torch.cat([torch.tensor(t) for t in targets]), lout,
                      torch.tensor([len(t) for t in targets]), blank=ctc_head.out_features - 1,
                      reduction="mean", zero_infinity=True)


def loss_fn(model, batch, audio_id: int, word_head=None):
    """Next-token cross-entropy on the response tokens; with `word_head` and an audio batch,
    also (second value) the word loss of stage "words" on its clips: an auxiliary loss
    that keeps the encoder hearing words while the decoder learns to answer speech (the
    head is training-only, not part of the saved model)."""
    ids = batch["input_ids"]
    emb = model.model.get_input_embeddings()(ids)
    aux = None
    if "input_features" in batch:
        a, enc, lout = encode_audio(model, batch["input_features"], batch["feature_attention_mask"],
                                    return_encoder=True)
        emb = emb.masked_scatter((ids == audio_id)[..., None], a.to(emb.dtype))
        if word_head is not None and batch.get("word_targets"):
            aux = word_loss(model, word_head, enc, lout, batch["word_targets"])
    pos = torch.arange(ids.shape[1])[None, :].expand_as(ids)
    h = model.model.language_model(inputs_embeds=emb, attention_mask=batch["attention_mask"],
                                   position_ids=pos, use_cache=False).last_hidden_state
    labels = batch["labels"][:, 1:]
    sel = labels != -100
    logits = model.lm_head(h[:, :-1][sel])
    loss = F.cross_entropy(logits.float(), labels[sel])
    return (loss, aux) if word_head is not None else loss


# ----------------------------------------------------------------------------- sampling

class Sampler:
    """Stateless example sampler: the examples of step s depend only on (seed, stage, s),
    so a resumed build draws exactly what an uninterrupted one would."""

    def __init__(self, cfg: BuildConfig, corpus: Corpus, lengths: np.ndarray | None = None):
        self.cfg = cfg
        self.q = corpus.questions
        self.clips = corpus.clips
        benign = np.array([c.label == "benign" for c in corpus.clips])
        # (all clips, benign clips) per length quantile; one pool of everything without lengths
        bucket = np.zeros(len(corpus.clips), dtype=int)
        n_buckets = cfg.mixed_length_buckets if lengths is not None else 0
        if n_buckets > 0:
            edges = np.quantile(lengths, np.linspace(0, 1, n_buckets + 1))[1:-1]
            bucket = np.searchsorted(edges, lengths, side="right")
        self.bucket = bucket
        self.pools = {k: (np.flatnonzero(bucket == k), np.flatnonzero((bucket == k) & benign))
                      for k in np.unique(bucket)}

    def _question(self, rng, label):
        src = "paper" if rng.random() < self.cfg.paper_share and self.q[label]["paper"] else "synthetic"
        pool = self.q[label][src]
        q = pool[rng.integers(len(pool))]
        if src == "paper" and self.cfg.paper_surface_noise:
            # surface variation (case, final punctuation): the same question, as users type it
            r = rng.random()
            text = q.text.lower() if r < 0.15 else q.text
            if rng.random() < 0.2:
                text = text.rstrip("?.! ")
            q = C.Question(text or q.text, q.label, q.source)
        return q

    def _refusal(self, rng):
        return C.REFUSALS[rng.integers(len(C.REFUSALS))]

    def _keep(self, rng, full_share):
        return None if rng.random() < full_share else self.cfg.prefix_tokens

    def text_examples(self, rng, n):
        kinds, p = zip(*self.cfg.text_mix)
        out = []
        for kind in rng.choice(kinds, size=n, p=np.array(p) / sum(p)):
            if kind == "harmful_refuse":
                q = self._question(rng, "harmful")
                out.append((q.text, None, "text-only", self._refusal(rng), self._keep(rng, self.cfg.full_refusal_share)))
            elif kind == "benign_answer":
                q = self._question(rng, "benign")
                out.append((q.text, None, "text-only", C.answer_for(q.text), self._keep(rng, self.cfg.full_answer_share)))
            else:
                q = self._question(rng, "harmful" if rng.random() < 0.5 else "benign")
                out.append((q.text.strip() + REFUSAL_INSTRUCTION, None, "text-only", self._refusal(rng),
                            self._keep(rng, self.cfg.full_refusal_share)))
        return out

    def audio_examples(self, rng, n):
        kinds, p = zip(*self.cfg.audio_mix)
        # this step's length quantile: that of a uniformly drawn clip (no draw with one pool)
        k = self.bucket[rng.integers(len(self.clips))] if len(self.pools) > 1 else 0
        everything, benign = self.pools[k]
        out = []
        for kind in rng.choice(kinds, size=n, p=np.array(p) / sum(p)):
            if kind == "asr":
                i = int(everything[rng.integers(len(everything))])
                prompt = C.ASR_PROMPTS[rng.integers(len(C.ASR_PROMPTS))]
                out.append((prompt, i, "audio-text", C.transcript_for(self.clips[i].text)))
                continue
            i = int(benign[rng.integers(len(benign))])
            text = self.clips[i].text
            prompt = C.ANSWER_PROMPTS[rng.integers(len(C.ANSWER_PROMPTS))]
            if kind == "audio_text_answer":
                out.append((prompt, i, "audio-text", C.answer_for(text)))
            elif kind == "audio_only_answer":
                out.append((None, i, "audio-only", C.answer_for(text)))
            elif kind == "audio_text_instruction":
                out.append((prompt + REFUSAL_INSTRUCTION, i, "audio-text", self._refusal(rng),
                            self._keep(rng, self.cfg.full_refusal_share)))
            else:
                out.append((REFUSAL_INSTRUCTION.strip(), i, "audio-only", self._refusal(rng),
                            self._keep(rng, self.cfg.full_refusal_share)))
        return out


def lr_at(cfg: BuildConfig, step: int, total: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, total - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _cycle_position(cycles, step: int) -> tuple[int, int]:
    """(step within its cycle, length of that cycle) for a run of consecutive cosine cycles."""
    for n in cycles:
        if step < n:
            return step, n
        step -= n
    raise ValueError(f"step beyond the {sum(cycles)} steps of cycles {cycles}")


# ----------------------------------------------------------------------------- build

def run_key(cfg: BuildConfig, corpus_checksum: str) -> str:
    import transformers

    return rio.sha256_json({"config": asdict(cfg), "corpus": corpus_checksum, "torch": torch.__version__,
                            "transformers": transformers.__version__, "format": FORMAT})[:16]


def _save_state(path: Path, model, heads: dict, opts: dict, stage: str, step: int, steps: dict, log: list):
    with rio.atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "heads": {k: h.state_dict() for k, h in heads.items()},
                    "opts": {k: o.state_dict() for k, o in opts.items()},
                    "stage": stage, "step": step, "steps": steps, "log": log}, tmp)


@torch.no_grad()
def first_token_check(model, batcher: Batcher, questions, refusal_id: int) -> str:
    """Development: text-only refusal decision (argmax first token == "I") on held-out
    TRAIN questions (BuildConfig.val_fraction)."""
    was = model.training
    model.eval()
    ex = [(q.text, None, "text-only", "", 0) for q in questions]
    ref = []
    for s in range(0, len(ex), 128):
        b = batcher.collate(ex[s:s + 128])
        emb = model.model.get_input_embeddings()(b["input_ids"])
        h = model.model.language_model(inputs_embeds=emb, attention_mask=b["attention_mask"],
                                       use_cache=False).last_hidden_state
        last = b["attention_mask"].sum(-1) - 1
        ref += (model.lm_head(h[torch.arange(len(last)), last]).argmax(-1) == refusal_id).tolist()
    model.train(was)
    ref = np.array(ref)
    lab = np.array([q.label for q in questions])
    return (f"val text-only: harmful refused {100 * ref[lab == 'harmful'].mean():.1f}%, "
            f"benign answered {100 * (1 - ref[lab == 'benign'].mean()):.1f}% (n={len(lab)})")


def train(cfg: BuildConfig, model, batcher: Batcher, sampler: Sampler, feats: MelFeatures, *,
          state_dir: Path | None, deadline: float | None, progress: bool = True, val=()) -> dict:
    """Stages 'hear', 'text', 'words', 'mixed'. Returns the training log."""
    torch.manual_seed(cfg.seed + 1)
    d_audio = model.config.audio_config.d_model
    ctc_head = torch.nn.Linear(d_audio, batcher.n_units + 1)
    word_head = torch.nn.Linear(d_audio, model.config.text_config.vocab_size)
    audio_params = list(model.model.audio_tower.parameters()) + list(model.model.multi_modal_projector.parameters())
    audio_ids = {id(p) for p in audio_params}
    llm_params = [p for p in model.parameters() if id(p) not in audio_ids]
    # group 0: the LLM (a gentler rate in the audio stage), group 1: encoder, projector, CTC head
    opt = torch.optim.AdamW([{"params": llm_params, "scale": 1.0},
                             {"params": audio_params + list(ctc_head.parameters()), "scale": 1.0}],
                            lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    # stage "words" trains only the encoder, the projector and its head, with fresh moments;
    # the audio stage starts afresh too (the hearing stages moved the encoder far from where
    # the first optimiser's moments were), with the word head still learning
    word_opt = torch.optim.AdamW(audio_params + list(word_head.parameters()), lr=cfg.lr,
                                 weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    mixed_opt = torch.optim.AdamW([{"params": llm_params, "scale": 1.0},
                                   {"params": audio_params + list(word_head.parameters()), "scale": 1.0}],
                                  lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    heads = {"ctc": ctc_head, "word": word_head}
    opts = {"main": opt, "word": word_opt, "mixed": mixed_opt}
    steps = {"hear": cfg.hear_steps, "text": cfg.text_steps, "words": sum(cfg.word_cycles), "mixed": cfg.mixed_steps}
    stage, start, log = "hear", 0, []
    state_path = state_dir / "state.pt" if state_dir else None
    if state_path is not None and state_path.exists():
        try:
            st = torch.load(state_path, weights_only=False)
            model.load_state_dict(st["model"])
            for k, h in heads.items():
                h.load_state_dict(st["heads"][k])
            for k, o in opts.items():
                o.load_state_dict(st["opts"][k])
            stage, start, steps, log = st["stage"], st["step"], st["steps"], st["log"]
            print(f"[mini] resuming from {state_path} at {stage} step {start}", flush=True)
        except Exception as e:  # noqa: BLE001 - a damaged checkpoint is ignored
            print(f"[mini] ignoring unreadable checkpoint {state_path}: {e}", flush=True)
            stage, start, log = "hear", 0, []
    model.train()
    order = ("hear", "text", "words", "mixed")
    positions = model.model.audio_tower.embed_positions.weight
    for st_name in order[order.index(stage):]:
        s0 = start if st_name == stage else 0
        positions.requires_grad_(st_name == "words" and cfg.word_positions)
        t_stage = time.time()
        s = s0
        while s < steps[st_name]:
            rng = np.random.default_rng([cfg.seed, order.index(st_name), s])
            step_opt = {"words": word_opt, "mixed": mixed_opt}.get(st_name, opt)
            s_lr, n_lr = s, steps[st_name]
            if st_name == "words":
                s_lr, n_lr = _cycle_position(cfg.word_cycles, s)
                if s_lr == 0 and s > 0:
                    word_opt.state.clear()  # warm restart: fresh moments for the new cycle
            for gi, g in enumerate(step_opt.param_groups):
                scale = cfg.mixed_llm_lr_scale if (st_name == "mixed" and gi == 0) else 1.0
                g["lr"] = scale * lr_at(cfg, s_lr, n_lr)
            if st_name in ("hear", "words"):  # the encoder alone, on length-sorted clips
                size = cfg.hear_batch if st_name == "hear" else cfg.word_batch
                idx = length_batch(feats.lengths, size, cfg.length_chunk, cfg.seed, order.index(st_name), s)
                batch = batcher.collate([(None, int(i), "audio-only", "") for i in idx], feats)
                _, enc, lout = encode_audio(model, batch["input_features"], batch["feature_attention_mask"],
                                            return_encoder=True)
                if st_name == "hear":
                    loss = encoder_ctc(ctc_head, enc, lout, batch["ctc_targets"])
                    parts = {"ctc": loss.item()}
                else:
                    loss = word_loss(model, word_head, enc, lout, batch["word_targets"])
                    parts = {"words": loss.item()}
            elif st_name == "text":
                batch = batcher.collate(sampler.text_examples(rng, cfg.text_batch))
                loss = loss_fn(model, batch, batcher.audio_id)
                parts = {"text": loss.item()}
            else:
                a = batcher.collate(sampler.audio_examples(rng, cfg.audio_batch), feats)
                t = batcher.collate(sampler.text_examples(rng, cfg.mixed_text_batch))
                la, lw = loss_fn(model, a, batcher.audio_id, word_head if cfg.word_weight else None)
                lt = loss_fn(model, t, batcher.audio_id)
                loss = la + lt + (cfg.word_weight * lw if lw is not None else 0.0)
                parts = {"audio": la.item(), "text": lt.item(), "words": lw.item() if lw is not None else float("nan")}
            step_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in step_opt.param_groups for p in g["params"]], cfg.max_grad_norm)
            step_opt.step()
            s += 1
            log.append({"stage": st_name, "step": s, **{k: round(v, 4) for k, v in parts.items()}})
            # time budget: after a few steps of the last stage, shrink it to fit
            if deadline is not None and st_name == "mixed" and s == s0 + 5:
                per = (time.time() - t_stage) / 5
                fit = s + int((deadline - time.time()) / per)
                if fit < steps["mixed"]:
                    print(f"[mini] time budget: mixed stage cut from {steps['mixed']} to {max(fit, s)} steps", flush=True)
                    steps["mixed"] = max(fit, s)
            if progress and (s % 50 == 0 or s == steps[st_name]):
                avg = {k: np.mean([r[k] for r in log[-50:] if k in r]) for k in parts}
                print(f"[mini] {st_name} {s}/{steps[st_name]} " + " ".join(f"{k}={v:.3f}" for k, v in avg.items())
                      + f" ({time.time() - t_stage:.0f} s)", flush=True)
            if val and s % 100 == 0 and st_name in ("text", "mixed"):
                print("[mini]   " + first_token_check(model, batcher, val, batcher.tok.convert_tokens_to_ids("I")),
                      flush=True)
            if state_path is not None and s % cfg.checkpoint_every == 0 and s < steps[st_name]:
                _save_state(state_path, model, heads, opts, st_name, s, steps, log)
        if state_path is not None:
            nxt = order.index(st_name) + 1
            if nxt < len(order):
                _save_state(state_path, model, heads, opts, order[nxt], 0, steps, log)
    positions.requires_grad_(False)
    model.eval()
    return {"steps": steps, "log": log}


def _file_hashes(folder: Path) -> dict:
    return {p.name: rio.sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != RECORD}


def build(out: Path = DEFAULT_OUT, cfg: BuildConfig = BuildConfig(), *, minutes: float | None = None,
          threads: int = 2, resume: bool = True, progress: bool = True) -> dict:
    """Build the mini-LALM into `out`; returns the build record."""
    import tokenizers
    import transformers

    t0 = time.time()
    deadline = t0 + 60 * minutes if minutes else None
    out = Path(out).resolve()
    check_build_target(out, threads)  # before the build, not after 20 minutes of it
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    df = split_table(cfg)
    corpus = build_corpus(cfg, df)
    manifest = corpus.manifest()
    n_q = {lab: {k: len(v) for k, v in d.items()} for lab, d in corpus.questions.items()}
    if progress:
        print(f"[mini] corpus: questions {n_q}, {len(corpus.clips)} clips, "
              f"{corpus.dropped} generated texts dropped as held-out", flush=True)
    key = run_key(cfg, manifest["checksum"])
    cache = cache_dir() / "mini-build"
    state_dir = cache / key if resume else None
    if state_dir:
        state_dir.mkdir(parents=True, exist_ok=True)
    processor, model = make_processor_and_model(cfg, tokenizer_corpus(cfg, corpus))
    t_feat = time.time()
    feats = clip_features(corpus, processor.feature_extractor, cache if resume else None, progress=progress)
    if progress:
        print(f"[mini] speech + features: {time.time() - t_feat:.0f} s; model "
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters", flush=True)
    batcher = Batcher(processor, model)
    batcher.clip_units, batcher.n_units = ctc_targets(batcher, corpus, cfg.ctc_units)
    batcher.clip_words = word_targets(processor.tokenizer, corpus, feats)
    result = train(cfg, model, batcher, Sampler(cfg, corpus, feats.lengths), feats, state_dir=state_dir,
                   deadline=deadline, progress=progress, val=corpus.val)

    with rio.atomic_folder(out) as tmp:  # a build is only ever seen whole
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        blob = json.dumps(manifest, sort_keys=True).encode("utf-8")
        with open(tmp / MANIFEST, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                               compresslevel=9, mtime=0) as f:
            f.write(blob)  # mtime 0, no file name: the same corpus gives the same bytes
        record = {
            MARKER: True, "format": FORMAT, "seed": cfg.seed, "config": asdict(cfg),
            "steps": result["steps"], "final_losses": result["log"][-1] if result["log"] else None,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "python": platform.python_version(),
            "threads": threads, "corpus_checksum": manifest["checksum"],
            "split_checksum": split_checksum(df), "questions": n_q, "clips": len(corpus.clips),
            "dropped_as_held_out": corpus.dropped, "parameters": sum(p.numel() for p in model.parameters()),
            "build_seconds": round(time.time() - t0, 1), "minutes_budget": minutes,
            "git_commit": rio.git_commit(), "built_at": rio.utc_now(),
        }
        record["files"] = _file_hashes(tmp)
        rio.write_json(tmp / RECORD, record)
    if state_dir:
        shutil.rmtree(state_dir, ignore_errors=True)
    if progress:
        print(f"[mini] built {out} in {record['build_seconds']:.0f} s", flush=True)
    record["_val"] = corpus.val
    return record


def check_build_target(out: Path, threads: int) -> None:
    """The build replaces `out` whole: refuse a file, or a folder that is not an earlier build;
    and a thread count below 1."""
    if threads < 1:
        raise ValueError(f"--threads must be at least 1, not {threads}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a model folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "build_record.json").is_file():
        raise ValueError(f"--out {out} holds files but no mini-LALM build (no build_record.json); the build "
                         "would replace them: give a new or empty folder")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m rrs.mini.build", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="model folder (default: rrs/mini/model)")
    ap.add_argument("--seed", type=int, default=0,
                    help="training seed, and the seed of the split whose test questions the build never sees")
    ap.add_argument("--minutes", type=float, default=None,
                    help="wall-clock budget for the whole build; the audio stage is shortened to fit")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--no-resume", action="store_true", help="ignore cached features and checkpoints")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a BuildConfig field (development), e.g. --set mixed_steps=300")
    return ap.parse_args(argv)


def config_from_args(args) -> BuildConfig:
    cfg = BuildConfig(seed=args.seed, split_seed=args.seed)
    over = {}
    fields = {f: type(v) for f, v in asdict(cfg).items()}
    for item in args.set:
        k, eq, v = item.partition("=")
        if k not in fields:
            raise SystemExit(f"rrs.mini.build: unknown config field {k!r}")
        if not eq:
            raise SystemExit(f"rrs.mini.build: --set {item!r} gives no value (write FIELD=VALUE)")
        kind = fields[k]
        try:
            value = json.loads(v) if kind in (tuple, list, bool) else kind(v)
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            raise SystemExit(f"rrs.mini.build: --set {item!r}: not a valid {kind.__name__} ({e})") from None
        if kind in (tuple, list) and not isinstance(value, list) or kind is bool and not isinstance(value, bool):
            raise SystemExit(f"rrs.mini.build: --set {item!r}: expected a JSON {kind.__name__}")
        if kind in (int, float) and not (math.isfinite(value) and value >= 0):
            raise SystemExit(f"rrs.mini.build: --set {item!r}: expected a finite number >= 0")
        if k.endswith(("_fraction", "_share")) and value > 1:
            raise SystemExit(f"rrs.mini.build: --set {item!r}: a share, at most 1")
        over[k] = tuple(tuple(x) if isinstance(x, list) else x for x in value) if kind is tuple else value
    return replace(cfg, **over)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = config_from_args(args)
    try:
        check_build_target(Path(args.out).resolve(), args.threads)
    except ValueError as e:
        raise SystemExit(f"rrs.mini.build: error: {e}") from None
    record = build(Path(args.out), cfg, minutes=args.minutes, threads=args.threads, resume=not args.no_resume)
    val = record.pop("_val")
    if val:
        from .behaviour import quick_text_check

        quick_text_check(Path(args.out), val, modes=("text-only",) if cfg.mixed_steps == 0 else
                         ("audio-text", "text-only", "audio-only"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
