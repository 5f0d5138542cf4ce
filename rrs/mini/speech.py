"""Fast speech and features for the mini-LALM build (the evaluation path's engine, resampler and features).

- `synthesize`: eSpeak NG through rrs.audio's engine and resampler, plus eSpeak NG's own
  word timings (`synthesize_words`). Unlike rrs.audio.speak, it speaks in this process
  (no helper process, no fork per clip): the build speaks its corpus once, in one fixed
  order, so its clips are reproducible as they are, and the committed model was built
  from them. Each clip differs from rrs.audio.speak's by a few samples (eSpeak NG's state
  carries over between utterances; see rrs.espeak).
- `MelFeatures`: Whisper log-mel features exactly as the processor's WhisperFeatureExtractor
  computes them for a clip padded to the model's window, but batched in torch and kept
  *cropped* (valid frames + a margin) with the per-clip padding value, so a training
  batch only carries the frames it needs. `window()` rebuilds the full padded features.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .. import audio as raudio
from .. import espeak

HOP = 160
N_FFT = 400
MARGIN = 8  # frames kept beyond the valid ones (the convolutions look 1-3 frames ahead)


# part of the build's feature-cache key: speech made in-process, in the build's order
BUILD_SPEECH = "espeak-ng-seeded"


def synthesize(text: str, voice: str, rate: int) -> np.ndarray:
    """eSpeak NG speech of `text` at 16 kHz mono float32 (in-process; see the docstring)."""
    return synthesize_words(text, voice, rate)[0]


def synthesize_words(text: str, voice: str, rate: int) -> tuple[np.ndarray, list]:
    """(speech as `synthesize`, [(first char, end char, start ms)] of each word of
    text.strip()): the word timings come from eSpeak NG itself."""
    if not text or not text.strip():
        raise ValueError("cannot speak an empty text")
    engine = espeak.engine()
    wav, words = engine.synth_words(text.strip(), voice, rate)
    return raudio.resample(wav, engine.sample_rate), words


FRAME_MS = 40  # one audio token of Qwen2-Audio: 10 ms mel hop x conv stride 2 x pooling 2


def audio_token_words(words, n_frames: int, duration_ms: float) -> tuple[np.ndarray, np.ndarray]:
    """(word, position): per audio token (40 ms), the index of the word eSpeak NG was
    speaking at its centre (-1 before the first word and after duration_ms) and how far
    through that word the centre lies (0 <= position < 1). A word lasts until the next one
    starts; `words` are (start char, end char, start ms), in order."""
    centres = FRAME_MS * np.arange(n_frames) + FRAME_MS / 2
    starts = np.array([ms for _, _, ms in words], dtype=float)
    stops = np.append(starts[1:], duration_ms)
    word = np.searchsorted(starts, centres, side="right") - 1
    spoken = word >= 0
    spoken[spoken] = centres[spoken] < stops[word[spoken]]
    word[~spoken] = -1
    position = np.zeros(n_frames)
    position[spoken] = (centres[spoken] - starts[word[spoken]]) / np.maximum(1.0, stops - starts)[word[spoken]]
    return word, position


def frame_token_labels(text: str, words, n_frames: int, tokenizer, duration_ms: float) -> np.ndarray:
    """The text token spoken during each audio token of a clip of text.strip() (-100 where
    none: silence, punctuation). A word's frames are shared evenly among its tokens, in
    order. These are the targets that teach the encoder to hear words (rrs.mini.build)."""
    text = text.strip()
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    labels = np.full(n_frames, -100, np.int64)
    word, position = audio_token_words(words, n_frames, duration_ms)
    for k, (start, end, _) in enumerate(words):
        ids = [t for t, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]) if start <= a < end or a < start < b]
        inside = np.flatnonzero(word == k)
        if ids and inside.size:
            labels[inside] = np.asarray(ids)[np.minimum(len(ids) - 1, (position[inside] * len(ids)).astype(int))]
    return labels


@dataclass
class MelFeatures:
    """Cropped log-mel features of many clips: crops[i] is [n_mels, frames_i + MARGIN]
    (float16), lengths[i] the valid frames (what the processor's feature_attention_mask
    sums to), pads[i] the value every frame after the crop has in the padded window."""

    crops: list
    lengths: np.ndarray
    pads: np.ndarray
    window_frames: int
    words: list | None = None  # per clip: eSpeak NG's word timings (synthesize_words)

    def batch(self, idx, frames: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_features [B, n_mels, T], feature_attention_mask [B, T]) for clips `idx`.

        T = `frames` or the smallest multiple of 4 covering every crop of the batch; with
        T = window_frames this is exactly what the processor gives."""
        idx = list(idx)
        need = max(self.crops[i].shape[1] for i in idx)
        T = frames or min(self.window_frames, 4 * math.ceil(need / 4))
        n_mels = self.crops[idx[0]].shape[0]
        out = torch.empty(len(idx), n_mels, T, dtype=torch.float32)
        mask = torch.zeros(len(idx), T, dtype=torch.long)
        for b, i in enumerate(idx):
            c = torch.from_numpy(self.crops[i][:, :T].astype(np.float32))
            out[b, :, : c.shape[1]] = c
            out[b, :, c.shape[1]:] = float(self.pads[i])
            mask[b, : int(self.lengths[i])] = 1
        return out, mask


def log_mel(wavs: list[np.ndarray], feature_extractor, batch_size: int = 64) -> MelFeatures:
    """Whisper log-mel features of `wavs` (each must fit the extractor's window)."""
    fe = feature_extractor
    n_samples, window_frames = fe.n_samples, fe.nb_max_frames
    mel = torch.from_numpy(np.asarray(fe.mel_filters, dtype=np.float32))  # [n_fft//2+1, n_mels]
    hann = torch.hann_window(N_FFT)
    crops, lengths, pads = [None] * len(wavs), np.zeros(len(wavs), np.int64), np.zeros(len(wavs), np.float32)
    order = sorted(range(len(wavs)), key=lambda i: len(wavs[i]))
    for s in range(0, len(order), batch_size):
        chunk = order[s:s + batch_size]
        longest = max(len(wavs[i]) for i in chunk)
        if longest > n_samples:
            raise ValueError(f"a clip of {longest / raudio.SAMPLE_RATE:.2f} s is longer than the "
                             f"{n_samples / raudio.SAMPLE_RATE:g} s window")
        frames_needed = min(window_frames, math.ceil(longest / HOP) + MARGIN)
        # zeros after the signal, enough that the STFT's reflect padding at the end sees only
        # zeros up to the last kept frame: then those frames equal the full-window ones
        n = min(n_samples, frames_needed * HOP + N_FFT)
        x = torch.zeros(len(chunk), n)
        for b, i in enumerate(chunk):
            x[b, : len(wavs[i])] = torch.from_numpy(np.asarray(wavs[i], np.float32))
        with torch.no_grad():
            stft = torch.stft(x, N_FFT, HOP, window=hann, return_complex=True)
            mag = (stft[..., :-1].abs() ** 2)
            spec = torch.clamp(mel.T @ mag, min=1e-10).log10()  # [B, n_mels, frames]
            # the max over the whole padded window: padding frames are log10(1e-10) = -10
            mx = spec.amax(dim=(1, 2), keepdim=True)
            spec = (torch.maximum(spec, mx - 8.0) + 4.0) / 4.0
        for b, i in enumerate(chunk):
            valid = math.ceil(len(wavs[i]) / HOP)
            keep = min(window_frames, valid + MARGIN)
            crops[i] = spec[b, :, :keep].numpy().astype(np.float16)
            lengths[i] = min(valid, window_frames)
            pads[i] = (max(mx[b].item() - 8.0, -10.0) + 4.0) / 4.0
    return MelFeatures(crops, lengths, pads, window_frames)


_STRESS = str.maketrans("", "", "ˈˌ")


def phoneme_string(text: str, voice: str = "en-us") -> str:
    """eSpeak NG's IPA for `text` without stress marks: the targets of the encoder's
    auxiliary CTC loss (a few dozen symbols, learnt far faster than 2,048 BPE tokens)."""
    return " ".join(espeak.engine().phonemes(text, voice).translate(_STRESS).split())
