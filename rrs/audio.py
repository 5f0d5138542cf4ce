"""Speech: offline synthesis with eSpeak NG, an on-disk clip cache, and audio checks.

Every question is spoken by eSpeak NG (the library shipped by the PyPI package
`espeakng-loader`, called through ctypes) at 16 kHz mono float32. Clips are cached by a
hash of (text, voice, rate, engine), so re-runs are instant. The paper does not name its
TTS engine (unknown); eSpeak NG is OUR choice because it runs offline in milliseconds.

Audio given by a user goes through `load_audio`: stereo is averaged to mono and other
sample rates are resampled to 16 kHz (both said in a warning); empty, non-finite,
unreadable or over-long audio is refused with an error naming the file. Nothing is ever
truncated silently: Qwen2-Audio would cut at 30 s, so clips over the window are refused.
"""
from __future__ import annotations

import ctypes
import hashlib
import math
import threading
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from tqdm.auto import tqdm

from . import io as rio
from .paths import cache_dir

SAMPLE_RATE = 16_000
# "seeded": clips spoken since eSpeak NG's random generator is seeded per utterance (below);
# the name is part of every cache key, so clips from the unseeded engine are never reused.
ENGINE = "espeak-ng-seeded"
# eSpeak NG draws random numbers (e.g. the breathy "+f3" voice variant) from a generator it
# seeds differently in every process: unseeded, the same text, voice and rate gave
# different samples in two runs, and two `./run_all.sh` runs gave different tables.
RAND_SEED = 0


class AudioError(ValueError):
    """Audio that cannot be used: unreadable, empty, non-finite, wrong shape or too long."""


# ----------------------------------------------------------------------------- eSpeak NG

class _Event(ctypes.Structure):
    """espeak_EVENT (speak_lib.h); the trailing union is 8 bytes."""
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


class _ESpeak:
    """Thin ctypes wrapper; one process-wide instance (the C library is not re-entrant)."""

    _AUDIO_OUTPUT_SYNCHRONOUS = 2
    _POS_CHARACTER = 1
    _CHARS_UTF8 = 1
    _RATE = 1
    _EVENT_END_OF_LIST, _EVENT_WORD = 0, 1
    _CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                 ctypes.POINTER(_Event))

    def __init__(self):
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path().encode()
        self.sample_rate = self.lib.espeak_Initialize(self._AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
        if self.sample_rate <= 0:
            raise RuntimeError(f"eSpeak NG failed to initialise (data at {data!r})")
        self.lib.espeak_Info.restype = ctypes.c_char_p
        self.version = self.lib.espeak_Info(None).decode()
        self.lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        self.lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        self._chunks: list[np.ndarray] = []
        self._words: list[tuple[int, int, int]] = []
        self._callback = self._CALLBACK(self._collect)  # keep a reference: C holds it
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lock = threading.Lock()

    def _collect(self, wav, n, events):
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events and events[i].type != self._EVENT_END_OF_LIST:
            e = events[i]
            if e.type == self._EVENT_WORD:  # 1-based character position, length, start in ms
                self._words.append((e.text_position - 1, e.text_position - 1 + e.length, e.audio_position))
            i += 1
        return 0

    def synth(self, text: str, voice: str, rate: int) -> np.ndarray:
        return self.synth_words(text, voice, rate)[0]

    def synth_words(self, text: str, voice: str, rate: int) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        """(samples at the engine's rate, [(first char, end char, start ms)] of every spoken
        word of `text`): eSpeak NG's own word timings, free with the synthesis."""
        # Seeded per utterance, so the same process history gives the same samples in every
        # run. eSpeak NG also carries a little state from one utterance to the next (a clip
        # spoken after others can differ by a few samples from the same clip spoken first),
        # which is why the pipeline speaks in table order and caches every clip.
        with self.lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"eSpeak NG has no voice {voice!r}")
            self.lib.espeak_SetParameter(self._RATE, int(rate), 0)
            self.lib.espeak_ng_SetRandSeed(ctypes.c_long(RAND_SEED))
            self._chunks, self._words = [], []
            raw = text.encode("utf-8")
            err = self.lib.espeak_Synth(raw, len(raw) + 1, 0, self._POS_CHARACTER, 0,
                                        self._CHARS_UTF8, None, None)
            self.lib.espeak_Synchronize()
            if err != 0:
                raise RuntimeError(f"eSpeak NG failed on {text!r} (error {err})")
            pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
            words = list(self._words)
        return pcm.astype(np.float32) / 32768.0, _restore_first_word(text, words)

    def phonemes(self, text: str, voice: str = "en-us") -> str:
        """eSpeak NG's own IPA phonemes of `text` (what it would speak), clauses joined by
        spaces."""
        fn = self.lib.espeak_TextToPhonemes
        with self.lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"eSpeak NG has no voice {voice!r}")
            buf = ctypes.c_char_p(text.encode("utf-8"))
            out = []
            while buf.value:
                out.append(fn(ctypes.pointer(buf), self._CHARS_UTF8, 0x02).decode("utf-8"))
        return " ".join(x.strip() for x in out if x.strip())


def _restore_first_word(text: str, words: list) -> list:
    """eSpeak NG drops the WORD event of an utterance's first word once a few dozen
    espeak_TextToPhonemes calls ran in the process (measured: after 40, not after 20; the
    audio is unaffected). That word always starts the speech at 0 ms, so it is restored
    from the text: everything before the first reported word."""
    start = len(text) - len(text.lstrip())
    head = text[start: words[0][0] if words else len(text)].rstrip()
    if head:
        words = [(start, start + len(head), 0)] + words
    return words


_ENGINE: _ESpeak | None = None


def _engine() -> _ESpeak:
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _ESpeak()
    return _ENGINE


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
    """Synthesise `text` (no cache): 16 kHz mono float32."""
    if not text or not text.strip():
        raise ValueError("cannot speak an empty text")
    engine = _engine()
    wav = engine.synth(text.strip(), voice, rate)
    return resample(wav, engine.sample_rate)


# ----------------------------------------------------------------------------- checks and I/O

def validate(wav: np.ndarray, sr: int = SAMPLE_RATE, *, max_seconds: float | None = None,
             name: str = "audio") -> np.ndarray:
    """Check a clip the models can take as it is: 1-D, 16 kHz, non-empty, finite, within
    the window. Raises AudioError naming `name`; never truncates."""
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise AudioError(f"{name}: expected mono audio (1-D), got shape {wav.shape}")
    if sr != SAMPLE_RATE:
        raise AudioError(f"{name}: sample rate {sr} Hz, expected {SAMPLE_RATE} Hz")
    if wav.size == 0:
        raise AudioError(f"{name}: empty audio")
    if not np.isfinite(wav).all():
        raise AudioError(f"{name}: audio holds NaN or infinite samples")
    if max_seconds is not None and wav.size / sr > max_seconds:
        raise AudioError(f"{name}: {wav.size / sr:.2f} s is longer than the model's "
                         f"{max_seconds:g} s window (refused, not truncated)")
    return wav.astype(np.float32, copy=False)


def load_audio(path: str | Path, *, max_seconds: float | None = None) -> np.ndarray:
    """Read a user's audio file as 16 kHz mono float32.

    Stereo is averaged to mono and other rates are resampled (each with a warning);
    unreadable, empty, non-finite or over-long audio raises AudioError.
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
    blob = f"{ENGINE}|{_engine().version}|{voice}|{rate}|{text.strip()}".encode()
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
