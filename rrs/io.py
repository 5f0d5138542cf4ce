"""Atomic file writes and provenance records.

Every file the pipeline writes goes through a temporary file in the same folder and an
`os.replace`, so an interrupted run never leaves a half-written table, figure or model.
Every figure and table gets a `<name>.provenance.json` beside it.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .paths import REPO_ROOT


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp makes 0600 files; a renamed result gets the mode an ordinary write would have given it
FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def _staged(path: Path) -> Iterator[Path]:
    """A temporary file beside `path`, removed on exit unless it was renamed onto `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _rename_into_place(tmp: Path, path: Path) -> None:
    if tmp.exists():  # a replaced file keeps its mode (e.g. one a user made private)
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode) if path.exists() else FILE_MODE)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`."""
    path = Path(path)
    with _staged(path) as tmp:
        yield tmp
        _rename_into_place(tmp, path)


def write_together(contents: dict) -> list[Path]:
    """Write several files ({path: str or bytes}) as one: each goes to a temporary file first,
    and all are renamed into place only once every one is written, so a failure (a full disk,
    an error while writing) leaves the old set as it was, never new files beside old ones."""
    with contextlib.ExitStack() as stack:
        staged = []
        for path, content in contents.items():
            path = Path(path)
            tmp = stack.enter_context(_staged(path))
            if isinstance(content, bytes):
                tmp.write_bytes(content)
            else:
                tmp.write_text(content, encoding="utf-8")
            staged.append((tmp, path))
        for tmp, path in staged:
            _rename_into_place(tmp, path)
    return [path for _, path in staged]


_RENAME_EXCHANGE = 2  # linux/fs.h


def exchange_folders(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 with RENAME_EXCHANGE); False where the
    system or the file system cannot, and nothing was changed."""
    import ctypes  # here, not at import time: only a finished build needs it
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).renameat2
    except (OSError, AttributeError):  # no libc, or a glibc older than 2.28
        return False
    at_fdcwd = -100
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


def replace_folder(tmp: str | Path, out: str | Path) -> None:
    """Move the finished folder `tmp` onto `out`. An existing `out` is swapped with `tmp` in
    one step where the system allows, so `out` is never missing; elsewhere it is renamed
    aside first, and removed only once `tmp` is in place."""
    tmp, out = Path(tmp), Path(out)
    if out.exists() and exchange_folders(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # it now holds the old folder
        return
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(out: str | Path) -> Iterator[Path]:
    """The folder twin of `atomic_path`: yield an empty folder beside `out`; on success it
    replaces `out` (`replace_folder`), and it is removed in any case."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def json_text(obj: Any) -> str:
    """The project's JSON file layout (sorted keys, so that the same record gives the same bytes)."""
    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json_text(obj))


def jsonl_text(rows) -> str:
    return "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows)


def write_jsonl(path: str | Path, rows) -> Path:
    return write_text(path, jsonl_text(rows))


def read_jsonl(path: str | Path) -> list[dict]:
    """The JSON objects of a JSONL file, one a line (blank lines skipped); ValueError naming
    the file and line for a line that is not a JSON object."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {number} is not valid JSON ({e.msg}, column {e.colno})") from e
            if not isinstance(row, dict):
                raise ValueError(f"{path}: line {number} is not a JSON object ({type(row).__name__})")
            rows.append(row)
    return rows


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_content(content: str | bytes) -> str:
    """sha256 of what `write_together` / `write_text` put in a file (text as UTF-8)."""
    return hashlib.sha256(content.encode("utf-8") if isinstance(content, str) else content).hexdigest()


def sha256_json(obj: Any) -> str:
    """Checksum of parsed records (canonical JSON), independent of file formatting."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# what run_all.sh itself rewrites: changes there do not make the code that runs "dirty"
GENERATED_PATHS = ("figures", "tables", "results", "README.md")


def git_commit(root: str | Path = REPO_ROOT) -> str:
    """The commit of the working tree, with '+dirty' when it has uncommitted changes
    outside the generated outputs (GENERATED_PATHS, which a run is busy rewriting)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                *(f":(exclude){p}" for p in GENERATED_PATHS)],
                               cwd=root, capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


def cpu_name() -> str | None:
    """The processor's model name (Linux: /proc/cpuinfo), else what `platform` knows, else None."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip() or None
    except OSError:
        pass
    return platform.processor() or None


def compute_platform() -> dict:
    """What the last bits of a result depend on besides code, data and seed: torch's version,
    the kernels it runs (the CPU's instruction set, and the GPU when one is present) and the
    processor. The same commit gives byte-identical outputs on one machine, but can differ in
    a last digit on another processor, even one with the same kernels (README,
    "Reproducibility")."""
    import torch

    return {"torch": torch.__version__, "cpu_kernels": torch.backends.cpu.get_cpu_capability(), "cpu": cpu_name(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def provenance(profile: str, model: str | None, seed: int | None,
               data_checksum: str | None, **extra: Any) -> dict:
    """The record written beside every generated figure and table."""
    from . import __version__

    record = {
        "profile": profile,
        "model": model,
        "seed": seed,
        "data_checksum": data_checksum,
        "git_commit": git_commit(),
        "rrs_version": __version__,
        "platform": compute_platform(),
    }
    record.update(extra)
    return record


def provenance_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.stem + ".provenance.json")


def write_with_provenance(files: dict, record: dict, beside: str | Path) -> Path:
    """Write `files` ({path: str or bytes}) and, beside `beside`, their provenance record with
    each file's sha256, all together (`write_together`); returns the record's path."""
    record = {**record, "files": {Path(p).name: sha256_content(c) for p, c in files.items()}}
    record_path = provenance_path(beside)
    write_together({**files, record_path: json_text(record)})
    return record_path


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
