"""The questions: sources, one table schema, de-duplication, splits and dataset structures.

Every source is read from the data directory (`RRS_DATA_DIR`, default ../shared/data) or
downloaded from its public source pinned by commit. Files are verified by a checksum of
their *parsed records* (canonical JSON of the rows), not of raw bytes, so a re-serialised
copy with another trailing newline still verifies while an edited question does not.

Schema of the questions table: id, text, label ('harmful'|'benign'), category, source,
pair_id (harmful question and its benign twin share it), plus after `make_splits`:
group (a connected set of pairs that travel together), split ('train'|'test'|'excluded'
for the paper pairs, the extra test-set name otherwise) and test_set.
"""
from __future__ import annotations

import csv
import io
import json
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import io as rio
from .paths import data_dir

LABELS = ("harmful", "benign")
COLUMNS = ["id", "text", "label", "category", "source", "pair_id"]


@dataclass(frozen=True)
class Source:
    path: str          # relative to the data directory
    url: str           # public source, pinned by commit where the host has one
    records_sha256: str  # sha256 of the canonical JSON of the parsed records
    licence: str


_RRS = "https://raw.githubusercontent.com/YangHao97/RRS/b36595b1fae8cd47cb1bdad52129cdc0d90b6d5d"
_SARSTEER = "https://raw.githubusercontent.com/linweiii/SARSteer/076e07e9c95b6358cf8e3aad7ab8edecc8dbba90"
_FIGSTEP = "https://raw.githubusercontent.com/ThuCCSLab/FigStep/ded16a7ecf2136df9146b2bde3641f8ea9bb681d"
# llm-attacks publishes AdvBench on its default branch; the record checksum pins the content.
_ADVBENCH = "https://raw.githubusercontent.com/llm-attacks/llm-attacks/main"

SOURCES: dict[str, Source] = {
    "rrs_harmful": Source("rrs_paper/harmful.json", f"{_RRS}/data/harmful.json",
                          "464d8260218e22e29689bade15b2fe6a308657af6fc7e9751547091b0ea2c545",
                          "MIT (questions from BeaverTails, CC BY-NC 4.0)"),
    "rrs_benign": Source("rrs_paper/benign.json", f"{_RRS}/data/benign.json", "bdf1104780d68ff13932cf8fc10dd1491b59652acaba0687ef164dadb1be2483", "MIT"),
    "advbench_csv": Source("public/advbench_harmful_behaviors.csv",
                           f"{_ADVBENCH}/data/advbench/harmful_behaviors.csv", "fd482e6e543e004ed5a65d80fe615348a75f4cedb3bc1e0a29fd735e774cf9dd", "MIT"),
    "advbench_audio": Source("sarsteer/advbench_audio.json",
                             f"{_SARSTEER}/dataset/advbench/advbench_audio.json", "0045492b7f58e3fc71bd6c91d5369d13ac9ced32d49f49d4d738393ba4d06166", "MIT"),
    "advbench_safe": Source("sarsteer/advbench_audio_safe.json",
                            f"{_SARSTEER}/dataset/advbench/advbench_audio_safe.json", "edb2223fc3f3c52cc95f37983f776c4ed8bee81d9221c403db9920e01dd75ce4", "MIT"),
    "figstep": Source("public/figstep_safebench.csv", f"{_FIGSTEP}/data/question/safebench.csv",
                      "9cf9a1042b6c02faef01973fead8e422ac0b768c0eddce5f8a5c38a38295e5c0", "MIT"),
}


class DataError(ValueError):
    """A data file is missing, malformed or altered."""


def _where_to_get(key: str) -> str:
    src = SOURCES[key]
    return (f"get it from {src.url} (licence: {src.licence}) into <data dir>/{src.path}, "
            "point RRS_DATA_DIR at a folder holding it, or fetch it with "
            "rrs.data.download_sources(FOLDER) and set RRS_DATA_DIR=FOLDER")


def parse_records(key: str, raw: bytes) -> list[dict]:
    """Parse one source file into a list of flat records (strings only)."""
    path = SOURCES[key].path
    try:
        if path.endswith(".json"):
            rows = json.loads(raw.decode("utf-8"))
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise DataError(f"{path}: expected a JSON list of objects")
        else:
            reader = csv.DictReader(io.StringIO(raw.decode("utf-8")))
            rows = []
            for r in reader:
                # DictReader files extra fields under the key None and fills missing ones with
                # None: either way the row does not fit the header (an unquoted comma?)
                if None in r or None in r.values():
                    many = "more" if None in r else "fewer"
                    raise DataError(f"{path} is malformed: line {reader.line_num} has {many} fields than "
                                    f"its header's {len(reader.fieldnames)}; {_where_to_get(key)}")
                rows.append(r)
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise DataError(f"{path} is malformed: {e}; {_where_to_get(key)}") from e
    if not rows:
        raise DataError(f"{path} holds no records; {_where_to_get(key)}")
    return [{k: ("" if v is None else str(v)) for k, v in r.items()} for r in rows]


def read_source(key: str, root: Path | None = None, verify: bool = True) -> list[dict]:
    """Records of one source, verified against the pinned record checksum."""
    root = Path(root) if root is not None else data_dir()
    path = root / SOURCES[key].path
    if not path.is_file():
        raise DataError(f"missing data file {path}; {_where_to_get(key)}")
    records = parse_records(key, path.read_bytes())
    if verify:
        got = rio.sha256_json(records)
        want = RECORD_CHECKSUMS[key]
        if got != want:
            raise DataError(f"{path} does not match its pinned record checksum "
                            f"(got {got[:12]}…, want {want[:12]}…): the file was altered or is "
                            f"another version; {_where_to_get(key)}")
    return records


def download_sources(root: Path, keys=None, timeout: float = 60) -> Path:
    """Download the public files into `root`, verifying each by its record checksum."""
    root = Path(root)
    for key in keys or SOURCES:
        src = SOURCES[key]
        dest = root / src.path
        try:
            with urllib.request.urlopen(src.url, timeout=timeout) as r:  # noqa: S310 (pinned URL)
                raw = r.read()
        except (OSError, ValueError) as e:  # no network, a host that does not answer, a missing file
            raise DataError(f"could not download {src.url} (for {dest}): {e}") from e
        got = rio.sha256_json(parse_records(key, raw))
        if got != RECORD_CHECKSUMS[key]:
            raise DataError(f"downloaded {src.url} does not match its pinned record checksum "
                            f"(it was for {dest}; not kept)")
        with rio.atomic_path(dest) as tmp:
            tmp.write_bytes(raw)
    return root


def data_checksum(root: Path | None = None) -> str:
    """One checksum over every source's record checksum (recorded in provenance)."""
    root = Path(root) if root is not None else data_dir()
    per_file = {k: rio.sha256_json(read_source(k, root, verify=False)) for k in SOURCES}
    return rio.sha256_json(per_file)


# ----------------------------------------------------------------------------- normalise

def normalise_text(text: str) -> str:
    """The key under which two questions count as the same: case, punctuation and
    spacing folded ("How can I hurt my neighbours cat?" == "how can i hurt my neighbour's cat")."""
    text = text.lower().replace("’", "'").replace("'", "")
    return " ".join(re.findall(r"[a-z0-9]+", text))


_SAFE_PREFIX = re.compile(r"^\s*(#+\s*)?safe question\s*:\s*", re.IGNORECASE)


def clean_rewrite(text: str) -> str:
    """SARSteer's benign rewrites: drop stray whitespace and a '### Safe Question:' prefix."""
    return _SAFE_PREFIX.sub("", text).strip()


def _check_text(source: str, ident: str, text: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{source}: question {ident!r} has empty text")
    return text.strip()


def load_paper_pairs(root: Path | None = None) -> pd.DataFrame:
    """The paper's 700 harmful questions and their benign twins, paired row by row.

    14 harmful ids occur twice (same prompt, two categories) and 8 of their benign partners
    differ, so rows are paired by position, not by id. Prompts repeat under other ids too
    (600 distinct harmful prompts in 700 rows): `make_splits` groups them.
    """
    harmful = read_source("rrs_harmful", root)
    benign = read_source("rrs_benign", root)
    if len(harmful) != len(benign):
        raise DataError(f"rrs_paper: {len(harmful)} harmful vs {len(benign)} benign rows; "
                        "the files must align row by row")
    rows = []
    for i, (h, b) in enumerate(zip(harmful, benign)):
        for rec, label in ((h, "harmful"), (b, "benign")):
            for field in ("prompt", "category", "path"):
                if field not in rec:
                    raise DataError(f"rrs_paper {label} row {i}: missing field {field!r}")
            rows.append({"id": f"{rec['path']}#r{i:03d}",
                         "text": _check_text("rrs_paper", rec["path"], rec["prompt"]),
                         "label": label, "category": rec["category"], "source": "rrs_paper",
                         "pair_id": f"rrs-{i:03d}"})
    return pd.DataFrame(rows, columns=COLUMNS)


def load_advbench(root: Path | None = None) -> pd.DataFrame:
    """AdvBench: 520 harmful behaviours and their benign rewrites, paired by question_id."""
    goals = {normalise_text(r["goal"]) for r in read_source("advbench_csv", root)}
    harmful = read_source("advbench_audio", root)
    safe = {r["question_id"]: r for r in read_source("advbench_safe", root)}
    rows = []
    for h in harmful:
        qid = h["question_id"]
        if normalise_text(h["question"]) not in goals:
            raise DataError(f"advbench_audio.json question_id {qid} is not an AdvBench behaviour")
        if qid not in safe:
            raise DataError(f"advbench_audio_safe.json has no rewrite for question_id {qid}")
        rows.append({"id": f"advbench-h{int(qid):03d}", "label": "harmful",
                     "text": _check_text("advbench", qid, h["question"]),
                     "category": "advbench", "source": "advbench", "pair_id": f"advbench-{int(qid):03d}"})
        rows.append({"id": f"advbench-b{int(qid):03d}", "label": "benign",
                     "text": _check_text("advbench_safe", qid, clean_rewrite(safe[qid]["question"])),
                     "category": "advbench", "source": "advbench_safe", "pair_id": f"advbench-{int(qid):03d}"})
    return pd.DataFrame(rows, columns=COLUMNS)


def load_figstep(root: Path | None = None) -> pd.DataFrame:
    """FigStep SafeBench: 500 harmful questions in 10 categories (no benign twins)."""
    rows = []
    for r in read_source("figstep", root):
        ident = f"figstep-{int(r['category_id']):02d}-{int(r['task_id']):03d}"
        rows.append({"id": ident, "text": _check_text("figstep", ident, r["question"]),
                     "label": "harmful", "category": r["category_name"], "source": "figstep",
                     "pair_id": ident})
    return pd.DataFrame(rows, columns=COLUMNS)


# ----------------------------------------------------------------------------- splits

def _groups(df: pd.DataFrame) -> pd.Series:
    """Connected components over 'same pair' and 'same normalised text' (union-find)."""
    parent = list(range(len(df)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i, j):
        parent[find(i)] = find(j)

    for key in ("pair_id", "norm"):
        first: dict = {}
        for i, v in enumerate(df[key]):
            if v in first:
                union(i, first[v])
            else:
                first[v] = i
    roots = [find(i) for i in range(len(df))]
    names = {r: f"g{n:03d}" for n, r in enumerate(dict.fromkeys(roots))}
    return pd.Series([names[r] for r in roots], index=df.index)


def make_splits(paper: pd.DataFrame, extra: dict[str, pd.DataFrame], *, test_fraction: float,
                seed: int) -> pd.DataFrame:
    """De-duplicate and split.

    Paper pairs: rows connected by a pair or by the same normalised text form one group;
    groups go whole to `train` or `test` (seeded). Within a group, repeated texts collapse
    to one row (categories joined). A paper group whose text also occurs in an extra test
    set is `excluded` from training. Extra test sets keep their own name as split.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    paper = paper.assign(norm=paper["text"].map(normalise_text))
    paper["group"] = _groups(paper)
    paper = (paper.groupby(["group", "norm", "label"], sort=False, as_index=False)
             .agg(id=("id", "first"), text=("text", "first"),
                  category=("category", lambda c: ";".join(dict.fromkeys(c))),
                  source=("source", "first"), pair_id=("pair_id", "first")))
    # A pair whose "benign twin" is the harmful question itself (one such row in the
    # released data) says nothing about intent: it is excluded from train and test.
    labels_per_text = paper.groupby("norm")["label"].transform("nunique")
    conflicting = set(paper.loc[labels_per_text > 1, "group"])
    groups = sorted(set(paper["group"]) - conflicting)
    rng = np.random.default_rng(seed)
    test_groups = set(rng.choice(groups, size=round(test_fraction * len(groups)), replace=False))
    paper["split"] = np.where(paper["group"].isin(test_groups), "test", "train")
    paper.loc[paper["group"].isin(conflicting), "split"] = "excluded"
    paper["test_set"] = np.where(paper["split"] == "test", "paper_test", "")

    frames = [paper]
    extra_norms: set[str] = set()
    for name, df in extra.items():
        df = df.assign(norm=df["text"].map(normalise_text), group=df["pair_id"], split=name,
                       test_set=name)
        df = df.drop_duplicates(["norm", "label"])
        extra_norms |= set(df["norm"])
        frames.append(df)
    leaked = paper.loc[paper["norm"].isin(extra_norms), "group"]
    paper.loc[paper["group"].isin(leaked) & (paper["split"] == "train"), "split"] = "excluded"
    out = pd.concat(frames, ignore_index=True)
    return out[COLUMNS + ["group", "split", "test_set", "norm"]]


def load_questions(*, test_fraction: float = 0.2, seed: int = 0,
                   root: Path | None = None) -> pd.DataFrame:
    """Every question of every source in one table, split (the pipeline's entry point)."""
    extra = {"advbench": load_advbench(root), "figstep": load_figstep(root)}
    return make_splits(load_paper_pairs(root), extra, test_fraction=test_fraction, seed=seed)


def save_splits(df: pd.DataFrame, path: Path) -> Path:
    """Save the split table (CSV, atomic)."""
    with rio.atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def load_saved_questions(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, keep_default_na=False)
    missing = set(COLUMNS + ["split"]) - set(df.columns)
    if missing:
        raise DataError(f"{path}: missing columns {sorted(missing)}")
    return df


# ----------------------------------------------------------------------------- structures

STRUCTURES = ("basic", "mirror", "parallel")
# OUR control for Basic, not a structure of the paper: Mirror on Basic's half of the harmful questions
CONTROL_STRUCTURES = ("mirror_half",)


def training_halves(train: pd.DataFrame, seed: int = 0) -> tuple[set, set]:
    """The training groups split in two seeded halves (A, B), for Basic and its control."""
    groups = sorted(train["group"].unique())
    order = np.random.default_rng(seed).permutation(len(groups))
    cut = (len(groups) + 1) // 2
    return {groups[i] for i in order[:cut]}, {groups[i] for i in order[cut:]}


def dataset_structure(train: pd.DataFrame, structure: str, *, seed: int = 0) -> pd.DataFrame:
    """Training items of one dataset structure of the paper's Figure 3 (OUR reading of a
    caption; the paper's body could not be read).

    - mirror: each harmful question with its own minimally edited benign twin (the
      released data), spoken (audio).
    - basic: harmful questions with *unrelated* benign ones: the harmful questions of one
      seeded half of the training groups (A) and the benign questions of the other (B), so
      no trained harmful question has its twin among the benign ones. The training split
      has no other benign questions, so Basic has about half of Mirror's questions.
    - parallel: mirror's questions in both forms, written (text) and spoken (audio).
    - mirror_half (OUR control, not in the paper): the harmful questions of half A with
      their own twins, as many harmful questions as Basic, so that Basic against it
      measures the pairing alone and it against Mirror the size.
    Returns rows with a `modality` column ('audio' or 'text'). RRS uses no pairing, only
    which questions are trained (Δ is a difference of means), so `pair_id` is kept for
    the figure: Basic's harmful and benign rows are paired in order ('basic-NNN').
    """
    if structure not in STRUCTURES + CONTROL_STRUCTURES:
        raise ValueError(f"unknown dataset structure {structure!r}; choose one of "
                         f"{STRUCTURES + CONTROL_STRUCTURES}")
    train = train[train["split"] == "train"]
    harmful = train[train["label"] == "harmful"]
    benign = train[train["label"] == "benign"]
    if harmful.empty or benign.empty:
        raise ValueError("dataset structure needs harmful and benign training questions")
    if structure in ("basic", "mirror_half"):
        half_a, half_b = training_halves(train, seed)
        harmful = harmful[harmful["group"].isin(half_a)]
        benign = benign[benign["group"].isin(half_b if structure == "basic" else half_a)]
        if harmful.empty or benign.empty:
            raise ValueError(f"{structure}: too few training groups to split in two halves "
                             f"({len(half_a)} + {len(half_b)})")
    if structure == "basic":
        harmful = harmful.assign(pair_id=[f"basic-{i:03d}" for i in range(len(harmful))])
        benign = benign.assign(pair_id=[f"basic-{i:03d}" for i in range(len(benign))])
    items = pd.concat([harmful, benign], ignore_index=True).assign(modality="audio")
    if structure == "parallel":
        items = pd.concat([items, items.assign(modality="text")], ignore_index=True)
    return items


def statistics(df: pd.DataFrame) -> pd.DataFrame:
    """Counts per source x split x label (the data-statistics table)."""
    return (df.groupby(["source", "split", "label"]).size().rename("n").reset_index()
            .sort_values(["source", "split", "label"]).reset_index(drop=True))


RECORD_CHECKSUMS: dict[str, str] = {k: s.records_sha256 for k, s in SOURCES.items()}


# ----------------------------------------------------------------------------- the prepared set

def cap_groups(df: pd.DataFrame, split: str, limit: int | None, seed: int) -> pd.DataFrame:
    """Keep at most `limit` groups (pairs) of one split, drawn with `seed`."""
    if limit is None:
        return df
    groups = sorted(df.loc[df["split"] == split, "group"].unique())
    if len(groups) <= limit:
        return df
    keep = set(np.random.default_rng(seed).choice(groups, size=limit, replace=False))
    return df[(df["split"] != split) | df["group"].isin(keep)]


def prepare_dataset(profile, seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """The questions of a profile, split, size-capped and spoken (cached on disk).

    Returns the questions table plus voice, rate, audio_path, seconds and fits_window.
    """
    from . import audio
    from .paths import cache_dir
    from .profiles import Profile, get_profile

    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    df = load_questions(test_fraction=prof.test_fraction, seed=seed)
    df = cap_groups(df, "train", prof.max_train_pairs, seed)
    df = cap_groups(df, "test", prof.max_test_pairs, seed)  # capped only by the ci profile
    for split in ("advbench", "figstep"):  # the extra test sets
        df = cap_groups(df, split, prof.max_eval_questions, seed)
    df = audio.speak_questions(df.reset_index(drop=True), voices=prof.tts.voices,
                               rates=prof.tts.rates, max_seconds=prof.max_audio_seconds,
                               seed=seed, progress=progress)
    save_splits(df, cache_dir() / "data" / f"{prof.name}-seed{seed}.csv")
    return df


def check_texts(df: pd.DataFrame) -> None:
    """Raise DataError naming the questions (by id) of a table whose text is empty."""
    blank = df.loc[df["text"].fillna("").astype(str).str.strip() == "", "id"]
    if len(blank):
        raise DataError(f"questions {[str(i) for i in blank[:5]]} have empty text")


def model_inputs(df: pd.DataFrame, mode: str, *, prompt: str | None = None,
                 refusal: bool = False, max_seconds: float | None = None) -> list:
    """ModelInputs (rrs.modes) for every row of a table in one mode: its text, and in the audio
    modes its `audio` (array or path) or `audio_path` (rrs.audio.row_audio). The one builder of
    model inputs from a table (rrs.representations.question_inputs gives it the H0 prompt)."""
    from . import audio
    from .modes import build_input, check_mode

    check_mode(mode)
    if df.empty:
        raise ValueError("no questions to build model inputs from (empty table)")
    check_texts(df)
    inputs = []
    for row in df.itertuples(index=False):
        wav = None
        if mode != "text-only":
            if not getattr(row, "fits_window", True):
                raise audio.AudioError(f"question {row.id}: its clip does not fit the "
                                       "model's window; it cannot be used in audio modes")
            wav = audio.row_audio(row, max_seconds=max_seconds)
        inputs.append(build_input(row.text, wav, mode, prompt=prompt, refusal=refusal))
    return inputs


def main(argv=None) -> int:
    """`python -m rrs.data download FOLDER`: fetch every source file into FOLDER (then point
    RRS_DATA_DIR at it); each file is verified by its record checksum before it is kept."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m rrs.data", description=main.__doc__)
    ap.add_argument("command", choices=["download"], help="the one command: download")
    ap.add_argument("folder", type=Path, help="where the data files go (then set RRS_DATA_DIR to it)")
    args = ap.parse_args(argv)
    try:
        download_sources(args.folder)
    except (OSError, DataError) as e:  # OSError: no network, a host that does not answer
        raise SystemExit(f"rrs.data: error: {e}") from e
    print(f"downloaded {len(SOURCES)} files into {args.folder}; now run with RRS_DATA_DIR={args.folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
