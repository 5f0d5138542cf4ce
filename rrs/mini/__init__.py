"""The project's miniature audio LLM (mini-LALM): a tiny Qwen2-Audio trained here.

- `rrs.mini.build` trains it from scratch on the CPU (`python -m rrs.mini.build`);
- `load_mini(path)` checks a built folder (marker, files, checksums) and loads it through
  the same adapter as a hub model (rrs.models);
- `rrs.mini.behaviour` measures what it does per input mode.

The committed build lives in rrs/mini/model/ (config.json, model.safetensors, tokenizer and
processor files, training_corpus.json.gz, build_record.json).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..paths import REPO_ROOT

MODEL_DIR = REPO_ROOT / "rrs" / "mini" / "model"
RECORD = "build_record.json"
MARKER = "rrs_mini_lalm"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", RECORD)


class MiniModelError(ValueError):
    """A mini-LALM folder that is incomplete, not a mini-LALM, or altered."""


def verify_mini(path: str | Path | None = None, *, check_hashes: bool = True) -> dict:
    """Check a mini-LALM folder and return its build record.

    Raises FileNotFoundError when the folder does not exist, MiniModelError when a file
    is missing (an unfinished or damaged build), when config.json / the record lack the
    mini-LALM marker, or when a file's sha256 differs from build_record.json.
    """
    from .. import io as rio

    folder = Path(path) if path is not None else MODEL_DIR
    hint = "rebuild it with `python -m rrs.mini.build` (or `rrs-build-mini`)"
    if not folder.is_dir():
        raise FileNotFoundError(f"no mini-LALM at {folder}: {hint}")
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        raise MiniModelError(f"{folder} is not a complete mini-LALM build (missing {missing}); {hint}")
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MiniModelError(f"{folder}: unreadable config.json or {RECORD} ({e}); {hint}") from e
    if not (isinstance(record, dict) and record.get(MARKER) is True):
        raise MiniModelError(f"{folder}/{RECORD} does not describe a mini-LALM build (no {MARKER!r} marker)")
    if not isinstance(config, dict):
        raise MiniModelError(f"{folder}/config.json is not a mini-LALM config (not a JSON object)")
    if config.get("model_type") != "qwen2_audio" or config.get(MARKER) is not True:
        raise MiniModelError(f"{folder}/config.json is not a mini-LALM config (model_type="
                             f"{config.get('model_type')!r}, {MARKER}={config.get(MARKER)!r})")
    files = record.get("files") or {}
    if "model.safetensors" not in files or "config.json" not in files:
        raise MiniModelError(f"{folder}/{RECORD} lists no checksums for the weights/config; {hint}")
    if check_hashes:
        for name, want in sorted(files.items()):
            f = folder / name
            if not f.is_file():
                raise MiniModelError(f"{folder}: {name} listed in {RECORD} is missing; {hint}")
            got = rio.sha256_file(f)
            if got != want:
                raise MiniModelError(f"{folder}/{name} fails its checksum (sha256 {got[:12]}…, "
                                     f"recorded {want[:12]}…): the file was altered or damaged; {hint}")
    return record


def check_split_seed(path: str | Path | None, seed: int) -> None:
    """Raise MiniModelError when the build at `path` was made for another split seed than
    `seed`: its training corpus then excludes another seed's test split, not this one's."""
    folder = Path(path) if path is not None else MODEL_DIR
    built_for = verify_mini(folder, check_hashes=False).get("config", {}).get("split_seed")
    if built_for is None:
        raise MiniModelError(f"the build record of {folder} names no split seed (a build older than the split "
                             "seeds): rebuild it with `python -m rrs.mini.build --out DIR`")
    if built_for != seed:
        raise MiniModelError(f"the mini-LALM at {folder} was built for split seed {built_for}, not seed={seed}, "
                             "so its training corpus may hold this seed's test questions; build one for it "
                             f"(`python -m rrs.mini.build --out DIR --seed {seed}`) and pass it as the model "
                             "(./run_all.sh --model DIR)")


def load_mini(path: str | Path | None = None, *, device: str = "cpu", dtype: str = "float32"):
    """Verify (see `verify_mini`) and load a mini-LALM as an rrs.models adapter."""
    import transformers

    from ..models import load_adapter
    from ..models.base import transformers_major

    folder = Path(path) if path is not None else MODEL_DIR
    verify_mini(folder, check_hashes=False)  # a mini-LALM folder at all; load_adapter checks the hashes
    # e.g. in Qwen-Audio-Chat's transformers-4 environment, where loading fails on a missing file
    if transformers_major() < 5:
        raise MiniModelError(f"{folder}: a mini-LALM is saved in the layout of transformers 5 (its "
                             f"processor files) and does not load with transformers {transformers.__version__}; "
                             "use the project's environment (.venv, made by ./scripts/bootstrap.sh)")
    return load_adapter(str(folder.resolve()), device=device, dtype=dtype)


__all__ = ["MODEL_DIR", "MiniModelError", "load_mini", "verify_mini"]
