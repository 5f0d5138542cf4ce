"""eSpeak NG through ctypes: the engine of this process, and a helper process that speaks
every utterance from the state right after initialisation.

The library comes from the PyPI package `espeakng-loader`. It carries a little state from one
utterance to the next: in one process, a clip spoken after others differs by a few samples
from the same clip spoken first, and neither re-initialising the library
(`espeak_Terminate` + `espeak_Initialize`) nor a fixed priming utterance resets it (checked
2026-11-29). `fresh_engine()` is a client of a small helper process that initialises the
library once, never speaks itself, and forks a child per utterance; so a clip depends on
(text, voice, rate) only. The helper imports this module alone (ctypes and numpy), so a
fork costs little. `engine()` is this process's own engine (the mini model's build speaks
its corpus with it, in one fixed order).
"""
from __future__ import annotations

import atexit
import ctypes
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np

# eSpeak NG draws random numbers (e.g. the breathy "+f3" voice variant) from a generator it
# seeds differently in every process: unseeded, the same text, voice and rate gave
# different samples in two runs, and two `./run_all.sh` runs gave different tables.
RAND_SEED = 0


class _Event(ctypes.Structure):
    """espeak_EVENT (speak_lib.h); the trailing union is 8 bytes."""
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


class ESpeak:
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
        # run. The state eSpeak NG carries from one utterance to the next is another matter:
        # see the module docstring (fresh_engine).
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
        return pcm.astype(np.float32) / 32768.0, restore_first_word(text, words)

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


def restore_first_word(text: str, words: list) -> list:
    """eSpeak NG drops the WORD event of an utterance's first word once a few dozen
    espeak_TextToPhonemes calls ran in the process (measured: after 40, not after 20; the
    audio is unaffected). That word always starts the speech at 0 ms, so it is restored
    from the text: everything before the first reported word."""
    start = len(text) - len(text.lstrip())
    head = text[start: words[0][0] if words else len(text)].rstrip()
    if head:
        words = [(start, start + len(head), 0)] + words
    return words


_IN_PROCESS: ESpeak | None = None


def engine() -> ESpeak:
    """The engine of this process (its state carries over between utterances)."""
    global _IN_PROCESS
    if _IN_PROCESS is None:
        _IN_PROCESS = ESpeak()
    return _IN_PROCESS


def _send(fd_or_file, obj) -> None:
    data = pickle.dumps(obj)
    frame = struct.pack("<Q", len(data)) + data
    if isinstance(fd_or_file, int):
        while frame:
            frame = frame[os.write(fd_or_file, frame):]
    else:
        fd_or_file.write(frame)
        fd_or_file.flush()


def _receive(file):
    head = file.read(8)
    if len(head) < 8:
        return None
    return pickle.loads(file.read(struct.unpack("<Q", head)[0]))


def _serve() -> None:
    """The helper process: initialise eSpeak NG, never speak here, and fork one child per
    request, which answers from the untouched state (runs until its stdin closes)."""
    # Ctrl-C, or Jupyter interrupting its kernel's process group at shutdown, is meant for the
    # caller; this process ends when the caller closes its stdin (a traceback here only confused)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # answers go to a private copy of stdout; anything printed lands on stderr instead
    answers = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    requests = sys.stdin.buffer
    engine = ESpeak()
    _send(answers, ("ready", engine.sample_rate, engine.version))
    while (request := _receive(requests)) is not None:
        pid = os.fork()
        if pid == 0:  # the child: one utterance, then exit without Python's clean-up
            answered = False
            try:
                try:
                    answer = ("ok", engine.synth_words(*request))
                except Exception as err:  # noqa: BLE001 - handed to the caller
                    answer = ("error", err)
                try:
                    _send(answers, answer)
                except Exception:  # noqa: BLE001 - an exception that does not pickle
                    _send(answers, ("error", RuntimeError(repr(answer[1]))))
                answered = True
            finally:
                os._exit(0 if answered else 1)
        _, status = os.waitpid(pid, 0)
        if status != 0:  # the child died before answering (e.g. a crash in the C library)
            _send(answers, ("error", RuntimeError(f"eSpeak NG failed while speaking {request[0]!r} "
                                                  f"(wait status {status})")))


class FreshESpeech:
    """Client of the helper process (started on first use, one per process)."""

    def __init__(self):
        env = dict(os.environ)
        package_parent = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join([package_parent, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.proc = subprocess.Popen([sys.executable, "-c", "from rrs.espeak import _serve; _serve()"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.owner = os.getpid()
        self.lock = threading.Lock()
        hello = _receive(self.proc.stdout)
        if not hello or hello[0] != "ready":
            raise RuntimeError("the eSpeak NG speech process did not start (see its error above)")
        _, self.sample_rate, self.version = hello
        atexit.register(self.close)

    def synth_words(self, text: str, voice: str, rate: int):
        with self.lock:
            try:
                _send(self.proc.stdin, (text, voice, int(rate)))
                answer = _receive(self.proc.stdout)
            except (BrokenPipeError, OSError):
                answer = None
            if answer is None:
                raise RuntimeError(f"the eSpeak NG speech process ended while speaking {text!r}")
        status, value = answer
        if status == "error":
            raise value
        return value

    def close(self) -> None:
        if os.getpid() != self.owner:
            return
        self.proc.stdin.close()
        self.proc.wait(timeout=10)
        self.proc.stdout.close()


_FRESH: FreshESpeech | None = None


def fresh_engine():
    """The helper process's client, or, where processes cannot fork (Windows), this
    process's own engine with a warning that clips then depend on what was spoken before."""
    global _FRESH
    if not hasattr(os, "fork"):
        warnings.warn("no os.fork here: eSpeak NG speaks in this process, so a clip can differ by a few "
                      "samples depending on what was spoken before it", stacklevel=3)
        return engine()
    # a forked copy of this process (e.g. a DataLoader worker) must not share the pipes
    if _FRESH is None or _FRESH.owner != os.getpid() or _FRESH.proc.poll() is not None:
        _FRESH = FreshESpeech()
    return _FRESH
