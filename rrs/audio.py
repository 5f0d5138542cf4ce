"""Speech: offline synthesis with eSpeak NG, an on-disk clip cache, and audio checks.

Every question is spoken by eSpeak NG (the library shipped by the PyPI package
`espeakng-loader`, called through ctypes) at 16 kHz mono float32. Clips are cached by a
hash of (text, voice, rate, engine), so re-runs are instant. The paper does not name its
TTS engine (unknown); eSpeak NG is OUR choice because it runs offline in milliseconds.

Audio given by a user goes through `load_audio`: stereo is averaged to mono and other
sample rates are resampled to 16 kHz (both said in a warning); unreadable, empty,
non-finite, too short, silent, out-of-range or over-long audio is refused with an error
naming the file. Nothing is ever truncated silently: Qwen2-Audio would cut at 30 s, so
clips over the window are refused.

`speak` starts every clip from eSpeak NG's state right after initialisation (a helper
process, `rrs.espeak`), so a clip's samples depend on (text, voice, rate) only, whatever
was spoken before and in whatever order a cache is filled.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from tqdm import tqdm

from . import espeak, io as rio
from .paths import cache_dir

SAMPLE_RATE = 16_000
# Part of every clip's cache key, so clips made otherwise are never reused. "seeded":
# eSpeak NG's random generator is seeded per utterance (rrs.espeak.RAND_SEED); "fresh":
# each clip is spoken from the state right after initialisation (rrs.espeak.fresh_engine).
ENGINE = "espeak-ng-seeded-fresh"


class AudioError(ValueError):
    """Audio that cannot be used: unreadable, empty, non-finite, wrong shape, too short,
    silent, out of range or too long."""


# Limits of a usable clip, measured on the 1701 cached clips of the paper's questions
# (0.72-8.4 s long, peaks 0.51-1.02), so no clip of the pipeline comes near them:
MIN_SECONDS = 0.1  # shorter is a click, not a question (a one-sample WAV)
MIN_PEAK = 1e-4    # below it a clip is silence (eSpeak NG gives zeros for "?!" or "...")
MAX_PEAK = 1.5     # above it samples are not in [-1, 1]: e.g. int16 values not scaled


# ----------------------------------------------------------------------------- resampling

@lru_cache(maxsize=8)
def _sinc_kernel(orig: int, new: int, zeros: int = 6, rolloff: float = 0.99):
    """Band-limited (windowed-sinc) interpolation kernel, Hann window: the default kernel
    of torchaudio's `Resample`, computed in float64 and cast as it does, so clips keep
    the samples they had when torchaudio did this (it was dropped: its wheels pin a torch
    whose PyPI build is CUDA-only, 5 GB, and that filled a CI machine's disk).
    `orig` and `new` are the two rates divided by their gcd. Returns (kernel [new, 1, taps]
    for a conv1d with stride `orig` over the input, half-width)."""
    cutoff = min(orig, new) * rolloff  # low-pass below the lower Nyquist frequency
    width = math.ceil(zeros * orig / cutoff)  # taps each side: `zeros` sinc zero-crossings
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    # j / new in float32, as torchaudio has it (float64 here changes samples by ~1e-5)
    t = (torch.arange(0, -new, -1)[:, None, None] / new + idx) * cutoff
    t = t.clamp(-zeros, zeros)
    window = torch.cos(t * math.pi / zeros / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.ones_like(t), t.sin() / t) * window * (cutoff / orig)
    return kernel.to(torch.float32), width


def resample(wav: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """`wav` (1-D) from `orig_sr` to `target_sr` Hz, float32, by band-limited interpolation."""
    wav = np.asarray(wav, dtype=np.float32)
    if orig_sr == target_sr:
        return wav
    g = math.gcd(int(orig_sr), int(target_sr))
    orig, new = int(orig_sr) // g, int(target_sr) // g
    kernel, width = _sinc_kernel(orig, new)
    x = torch.nn.functional.pad(torch.from_numpy(wav)[None], (width, width + orig))
    with torch.no_grad():
        y = torch.nn.functional.conv1d(x[:, None], kernel, stride=orig)  # [1, new, frames]
    y = y.transpose(1, 2).reshape(-1)[: math.ceil(new * len(wav) / orig)]
    return y.numpy()


def speak(text: str, voice: str = "en-us", rate: int = 170) -> np.ndarray:
    """Synthesise `text` (no cache): 16 kHz mono float32, from eSpeak NG's state right after
    initialisation (the module docstring says why)."""
    if not text or not text.strip():
        raise ValueError("cannot speak an empty text")
    engine = espeak.fresh_engine()
    wav, _ = engine.synth_words(text.strip(), voice, rate)
    return resample(wav, engine.sample_rate)


# ----------------------------------------------------------------------------- checks and I/O

def validate(wav: np.ndarray, sr: int = SAMPLE_RATE, *, max_seconds: float | None = None,
             name: str = "audio") -> np.ndarray:
    """Check a clip the models can take as it is: 1-D, 16 kHz, finite, at least MIN_SECONDS
    long, not silent, samples within +-MAX_PEAK, within the window. Raises AudioError
    naming `name`; never truncates or rescales."""
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise AudioError(f"{name}: expected mono audio (1-D), got shape {wav.shape}")
    if sr != SAMPLE_RATE:
        raise AudioError(f"{name}: sample rate {sr} Hz, expected {SAMPLE_RATE} Hz")
    if wav.size == 0:
        raise AudioError(f"{name}: empty audio")
    if not np.isfinite(wav).all():
        raise AudioError(f"{name}: audio holds NaN or infinite samples")
    if wav.size < MIN_SECONDS * sr:
        raise AudioError(f"{name}: {wav.size} samples ({wav.size / sr:.3f} s) is shorter than "
                         f"{MIN_SECONDS:g} s; too short to hold speech")
    peak = float(np.abs(wav).max())
    if peak > MAX_PEAK:
        raise AudioError(f"{name}: samples reach {peak:g}, outside [-{MAX_PEAK:g}, {MAX_PEAK:g}]; "
                         "give float samples in [-1, 1] (integer PCM divided by its full scale)")
    if peak < MIN_PEAK:
        raise AudioError(f"{name}: silent audio (peak amplitude {peak:.2g} < {MIN_PEAK:g}); "
                         "nothing to hear (a question with nothing speakable?)")
    if max_seconds is not None and wav.size / sr > max_seconds:
        raise AudioError(f"{name}: {wav.size / sr:.2f} s is longer than the model's "
                         f"{max_seconds:g} s window (refused, not truncated)")
    return wav.astype(np.float32, copy=False)


def load_waveform(audio, *, max_seconds: float | None = None) -> np.ndarray | None:
    """An item's audio as 16 kHz mono float32: an array as is, a path read (load_audio), None
    (or NaN, a table's empty cell) as None."""
    if audio is None or (isinstance(audio, float) and np.isnan(audio)):
        return None
    if isinstance(audio, (str, Path)):
        return load_audio(audio, max_seconds=max_seconds)
    return np.asarray(audio, dtype=np.float32)


def row_audio(row, *, max_seconds: float | None = None) -> np.ndarray | None:
    """A table row's waveform: its `audio` (array or path), else its `audio_path`."""
    audio = getattr(row, "audio", None)
    if audio is None or (isinstance(audio, float) and np.isnan(audio)):
        audio = getattr(row, "audio_path", None)
    return load_waveform(audio, max_seconds=max_seconds)


def load_audio(path: str | Path, *, max_seconds: float | None = None) -> np.ndarray:
    """Read a user's audio file as 16 kHz mono float32.

    Stereo is averaged to mono and other rates are resampled (each with a warning);
    audio `validate` refuses (unreadable, silent, too short, ...) raises AudioError.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file")
    try:
        wav, sr = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise AudioError(f"{path}: unreadable or corrupt audio ({e})") from e
    if wav.shape[1] > 1:
        warnings.warn(f"{path}: {wav.shape[1]} channels averaged to mono", stacklevel=2)
    wav = wav.mean(axis=1)
    if sr != SAMPLE_RATE:
        warnings.warn(f"{path}: resampled from {sr} Hz to {SAMPLE_RATE} Hz", stacklevel=2)
        wav = resample(wav, sr)
    return validate(wav, SAMPLE_RATE, max_seconds=max_seconds, name=str(path))


def save_audio(path: str | Path, wav: np.ndarray) -> Path:
    with rio.atomic_path(path) as tmp:
        sf.write(tmp, wav, SAMPLE_RATE, subtype="FLOAT", format="WAV")
    return Path(path)


# ----------------------------------------------------------------------------- the clip cache

def clip_key(text: str, voice: str, rate: int) -> str:
    blob = f"{ENGINE}|{espeak.fresh_engine().version}|{voice}|{rate}|{text.strip()}".encode()
    return hashlib.sha256(blob).hexdigest()


def clip_path(text: str, voice: str, rate: int) -> Path:
    key = clip_key(text, voice, rate)
    return cache_dir() / "audio" / key[:2] / f"{key}.wav"


def cached_speech(text: str, voice: str, rate: int) -> Path:
    """The cached clip for (text, voice, rate), synthesised on first use."""
    path = clip_path(text, voice, rate)
    if not path.exists():
        save_audio(path, validate(speak(text, voice, rate), name=repr(text)))
    return path


def pick_voice(question_id: str, voices, rates, seed: int) -> tuple[str, int]:
    """A deterministic (voice, rate) per question: the same id and seed give the same clip."""
    h = int(hashlib.sha256(f"{seed}|{question_id}".encode()).hexdigest(), 16)
    return voices[h % len(voices)], rates[(h // len(voices)) % len(rates)]


def speak_questions(df: pd.DataFrame, *, voices, rates, max_seconds: float, seed: int = 0,
                    fallback_rates=(220, 260, 300), progress: bool = True) -> pd.DataFrame:
    """Speak every question of `df` (cached) and record voice, rate, path and duration.

    A clip longer than the window is re-spoken faster (the rate used is recorded); one
    that still does not fit is flagged `fits_window=False` and must not be fed to a model.
    """
    records = []
    for row in tqdm(df.itertuples(index=False), total=len(df), desc="speech", disable=not progress):
        voice, rate = pick_voice(row.id, voices, rates, seed)
        for r in (rate, *[f for f in fallback_rates if f > rate]):
            path = cached_speech(row.text, voice, r)
            seconds = sf.info(path).frames / SAMPLE_RATE
            if seconds <= max_seconds:
                break
        records.append({"id": row.id, "voice": voice, "rate": r, "audio_path": str(path),
                        "seconds": round(seconds, 3), "fits_window": seconds <= max_seconds})
    return df.merge(pd.DataFrame(records), on="id", how="left")
