"""Where things live: the repository, the data directory, caches and outputs."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """The directory holding the paper's questions and public benchmarks.

    `RRS_DATA_DIR` wins; otherwise ../shared/data beside the repository when it exists.
    """
    env = os.environ.get("RRS_DATA_DIR")
    if env:
        path = Path(env).expanduser().resolve()
        if not path.is_dir():
            raise FileNotFoundError(f"RRS_DATA_DIR={env!r} is not a directory")
        return path
    default = REPO_ROOT.parent / "shared" / "data"
    if default.is_dir():
        return default
    raise FileNotFoundError(
        "No data directory: set RRS_DATA_DIR to a folder holding rrs_paper/, public/ and "
        f"sarsteer/ (looked for {default}), or fetch the files from their pinned public sources "
        "with `python -m rrs.data download FOLDER` and set RRS_DATA_DIR=FOLDER."
    )


def cache_dir() -> Path:
    """Ignored folder for audio, model builds, representations and checkpoints."""
    path = Path(os.environ.get("RRS_CACHE_DIR", REPO_ROOT / "cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path
