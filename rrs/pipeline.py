"""`./run_all.sh`: execute the notebooks in order with papermill, skipping up-to-date stages.

A stage is up to date when its stamp (runs/<profile>/stamps/<notebook>.json) records the
same fingerprint: the notebook, the rrs package sources, the profile, seed, model and
data checksum, and the fingerprints of the stages before it. Executed notebooks go to
runs/<profile>/notebooks/ through a temporary file, so a failed or interrupted run never
replaces the last good one.

`--model` with another model than the profile's own (another mini build, or one of the
`paper` profile's other models) writes everything under runs/<profile>/models/<name>-<hash>/
(tables, figures, results, stamps, executed notebooks): the committed `mini` outputs and the
README describe the committed model only.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from . import io as rio
from .paths import REPO_ROOT
from .profiles import PROFILES, get_profile

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"


def notebooks() -> list[Path]:
    return sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def select(only: str | None) -> list[Path]:
    """Notebooks named by `--only` (comma-separated prefixes or names), in order."""
    books = notebooks()
    if not only:
        return books
    chosen = []
    for token in only.split(","):
        token = token.strip().removesuffix(".ipynb")
        match = [b for b in books if b.stem == token or b.stem.startswith(token + "_")]
        if not match:
            names = ", ".join(b.stem for b in books)
            raise SystemExit(f"run_all: unknown notebook {token!r} in --only; known: {names}")
        chosen += match
    return [b for b in books if b in chosen]


def sources_fingerprint() -> str:
    h = hashlib.sha256()
    for path in sorted((REPO_ROOT / "rrs").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            h.update(str(path.relative_to(REPO_ROOT)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def stage_fingerprint(book: Path, params: dict, upstream: str, sources: str) -> str:
    blob = json.dumps({"notebook": rio.sha256_file(book), "params": params,
                       "upstream": upstream, "sources": sources}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def failed_cell(executed: Path) -> str:
    """Describe the cell that raised in a papermill output notebook."""
    try:
        nb = json.loads(executed.read_text())
    except (OSError, json.JSONDecodeError):
        return "unknown cell"
    for index, cell in enumerate(nb.get("cells", [])):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                first = "".join(cell.get("source", "")).strip().splitlines()[:1]
                return (f"cell {index} ({first[0][:70] if first else 'empty'}...): "
                        f"{out.get('ename')}: {out.get('evalue')}")
    return "unknown cell"


def resolve_model(model: str | None) -> str | None:
    """A local model folder as an absolute path (the notebooks run in notebooks/, so a
    relative one would point elsewhere there); any other id unchanged."""
    if model and Path(model).exists():
        return str(Path(model).resolve())
    return model


def run(profile: str, only: str | None, force: bool, seed: int, model: str | None,
        device: str | None = None, dtype: str | None = None, revision: str | None = None,
        trust_remote_code: bool = False) -> int:
    import papermill as pm

    prof = get_profile(profile)
    from .data import data_checksum

    model = resolve_model(model)
    params = {"profile": profile, "seed": seed}
    # only what was given, so that a plain run keeps the fingerprints of its stamps
    for key, value in (("model", model), ("device", device), ("dtype", dtype), ("revision", revision),
                       ("trust_remote_code", trust_remote_code)):
        if value:
            params[key] = value
    run_dir = REPO_ROOT / "runs" / profile
    own_root = prof.model_root(model)
    if own_root is not None:
        run_dir = own_root
        # the kernels inherit it: every table, figure and result of this run lands there
        os.environ.setdefault("RRS_OUTPUT_ROOT", str(own_root))
    stamps = run_dir / "stamps"
    executed_dir = run_dir / "notebooks"
    # The kernels' progress bars are stored in the executed notebooks, one chunk per refresh:
    # a refresh every 20 s keeps them readable (tqdm reads TQDM_* defaults from the environment).
    os.environ.setdefault("TQDM_MININTERVAL", "20")
    sources = sources_fingerprint()
    fingerprint_params = dict(params, data=data_checksum())
    books = notebooks()
    wanted = set(select(only))
    upstream = ""
    started = time.time()
    print(f"run_all: profile={profile} seed={seed} outputs -> {prof.output_root}")
    for i, book in enumerate(books, 1):
        fp = stage_fingerprint(book, fingerprint_params, upstream, sources)
        upstream = fp
        if book not in wanted:
            continue
        stamp = stamps / f"{book.stem}.json"
        if not force and stamp.exists() and json.loads(stamp.read_text()).get("fingerprint") == fp:
            print(f"[{i}/{len(books)}] {book.stem}: up to date, skipped (--force to rerun)")
            continue
        print(f"[{i}/{len(books)}] {book.stem}: running ...", flush=True)
        t0 = time.time()
        out = executed_dir / book.name
        tmp = executed_dir / f".{book.stem}.running.ipynb"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            pm.execute_notebook(str(book), str(tmp), parameters=params, kernel_name="python3",
                                cwd=str(NOTEBOOKS_DIR), progress_bar=True, log_output=False)
        except pm.PapermillExecutionError as e:
            failed = executed_dir / f"{book.stem}.failed.ipynb"
            tmp.replace(failed)
            print(f"\nrun_all: FAILED in notebook {book.name}, {failed_cell(failed)}\n"
                  f"  executed notebook with the traceback: {failed}\n"
                  f"  ({e.ename})", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            tmp.unlink(missing_ok=True)
            print(f"\nrun_all: interrupted in {book.name}; earlier results are untouched",
                  file=sys.stderr)
            return 130
        except Exception as e:  # the kernel died, papermill could not start it, ...: no stale notebook
            tmp.unlink(missing_ok=True)
            print(f"\nrun_all: notebook {book.name} could not run ({type(e).__name__}: {e})", file=sys.stderr)
            return 1
        tmp.replace(out)
        rio.write_json(stamp, {"fingerprint": fp, "notebook": book.name, "params": params,
                               "seconds": round(time.time() - t0, 1)})
        print(f"[{i}/{len(books)}] {book.stem}: done in {time.time() - t0:.0f} s", flush=True)
    if prof.commit_outputs and prof.output_root == REPO_ROOT:
        from .report import update_readme

        if update_readme():
            print("run_all: README results section regenerated from tables/ and figures/")
    print(f"run_all: finished in {time.time() - started:.0f} s")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="run_all.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="mini", help=f"one of {sorted(PROFILES)}")
    parser.add_argument("--only", help="comma-separated notebook numbers or names, e.g. 03 or 02,04")
    parser.add_argument("--force", action="store_true", help="rerun stages even if up to date")
    parser.add_argument("--seed", type=int, default=0,
                        help="split, speech and training seed (default 0); on mini it needs a model built "
                        "with that seed, passed as --model")
    parser.add_argument("--model", help="a registered model id or a local model folder, e.g. another mini "
                        "build (default: the profile's); outputs then go to runs/<profile>/models/")
    parser.add_argument("--device", help="e.g. cpu or cuda:1 (default: the profile's)")
    parser.add_argument("--dtype", help="float32, float16 or bfloat16 (default: the profile's)")
    parser.add_argument("--revision", help="the commit of a hub model to load (pin the one you reviewed)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let the model run code from its hub repository (Qwen-Audio-Chat needs it)")
    args = parser.parse_args(argv)
    if args.profile not in PROFILES:
        parser.error(f"unknown profile {args.profile!r}; choose one of {sorted(PROFILES)}")
    from .models.base import check_device_and_dtype

    try:  # before any notebook starts, not inside the first one that loads the model
        check_device_and_dtype(args.device, args.dtype)
    except ValueError as e:
        parser.error(str(e))
    return run(args.profile, args.only, args.force, args.seed, args.model, args.device, args.dtype,
               args.revision, args.trust_remote_code)


if __name__ == "__main__":
    sys.exit(main())
