"""Tables: the long results file, the paper-style pivots, and CSV / Markdown / LaTeX output.

Every number lives once in `tables/results_long.csv` (columns rrs.evaluation.LONG_COLUMNS,
one row per model x method x mode x test_set x metric); the tables are views of it.
Table contents are OURS (docs/method.md: the paper's tables could not be read): 1 main results
(ASR / over-rejection), 2 speech-chat capability, 3 Top-m% ablation, 4 dataset-structure
ablation (5, data statistics, comes from rrs.data.statistics).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from . import io as rio
from .evaluation import LONG_COLUMNS
from .modes import MODES

KEY = ["model", "method", "mode", "test_set", "metric"]
METRIC_LABELS = {"asr": "ASR", "over_rejection": "Over-rej.", "capability": "Capability"}
METHOD_ORDER = ("vanilla", "sft", "rrs")


# --------------------------------------------------------------------------- writers
def _cell(v, float_format: str) -> str:
    if isinstance(v, float):
        return "" if pd.isna(v) else float_format % v
    return "" if v is None else str(v)


def _cells(df: pd.DataFrame, float_format: str) -> tuple[list[str], list[list[str]]]:
    header = [str(c) for c in df.columns]
    body = [[_cell(v, float_format) for v in row] for row in df.itertuples(index=False, name=None)]
    return header, body


def to_markdown(df: pd.DataFrame, float_format: str = "%.1f") -> str:
    """A GitHub-flavoured Markdown table (no `tabulate` dependency); text left, numbers right."""
    header, body = _cells(df, float_format)
    numeric = [pd.api.types.is_numeric_dtype(t) for t in df.dtypes]
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join("---:" if n else ":---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def _tex(s: str) -> str:
    s = "".join(_TEX_ESCAPES.get(ch, ch) for ch in s)
    return s.replace("±", r"$\pm$").replace("–", "--")


def to_latex(df: pd.DataFrame, float_format: str = "%.1f") -> str:
    """A booktabs `tabular` (no jinja2 dependency)."""
    header, body = _cells(df, float_format)
    numeric = [pd.api.types.is_numeric_dtype(t) for t in df.dtypes]
    lines = [r"\begin{tabular}{" + "".join("r" if n else "l" for n in numeric) + "}", r"\toprule",
             " & ".join(_tex(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex(c) for c in row) + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def save_table(df: pd.DataFrame, name: str, tables_dir: str | Path, provenance: dict,
               float_format: str = "%.1f") -> dict[str, Path]:
    """Write <name>.csv, .md, .tex and <name>.provenance.json under `tables_dir`.

    All three renderings and the record are made in memory first, then written together
    (rrs.io.write_together), so a failure leaves the previous table's files as they were.
    `float_format` applies to all three (full precision lives in results_long.csv).
    A non-default index (e.g. from a pivot) is written as leading columns.
    """
    if not isinstance(df.index, pd.RangeIndex):
        df = df.reset_index()
    tables_dir = Path(tables_dir)
    texts = {
        "csv": df.to_csv(index=False, float_format=float_format, lineterminator="\n"),
        "md": to_markdown(df, float_format),
        "tex": to_latex(df, float_format),
    }
    paths = {ext: tables_dir / f"{name}.{ext}" for ext in texts}
    paths["provenance"] = rio.write_with_provenance({paths[ext]: text for ext, text in texts.items()},
                                                    {**provenance, "table": name}, beside=paths["csv"])
    return paths


# ----------------------------------------------------------------------- long file
def _check_long(df: pd.DataFrame, source: str = "long results") -> None:
    missing = [c for c in LONG_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{source} lack columns {missing}")


def append_long(long_path: str | Path, df: pd.DataFrame, provenance: dict) -> pd.DataFrame:
    """Merge `df` into the long results CSV: rows with the same (model, method, mode,
    test_set, metric) replace the old ones; sorted by that key. The file holds rows of
    several notebooks, so its provenance record keeps one record a notebook (`provenance`,
    the writer's, replaces that notebook's last); both are written together."""
    _check_long(df)
    long_path = Path(long_path)
    new = df[LONG_COLUMNS]
    if long_path.exists():
        # round_trip: pandas' default float parser can be off by one ulp, and every merge
        # would then rewrite numbers that did not change
        try:
            old = pd.read_csv(long_path, dtype={k: str for k in KEY}, float_precision="round_trip")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise ValueError(f"{long_path}: not a readable results CSV ({e}); move it away to start a new one") from e
        _check_long(old, str(long_path))
        new = pd.concat([old[LONG_COLUMNS], new], ignore_index=True)
    new = new.astype({k: str for k in KEY})
    merged = (new.drop_duplicates(KEY, keep="last").sort_values(KEY, kind="stable")
              .reset_index(drop=True))
    merged["n"] = merged["n"].astype(int)
    record_path = rio.provenance_path(long_path)
    sources = {}
    if long_path.exists() and record_path.exists():  # a new CSV starts a new record
        try:
            sources = json.loads(record_path.read_text(encoding="utf-8"))["sources"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{record_path}: not a readable provenance record ({e}); move it away, with "
                             f"{long_path.name}, to start a new one") from e
    sources[str(provenance.get("notebook", "unnamed"))] = provenance
    rio.write_with_provenance({long_path: merged.to_csv(index=False, lineterminator="\n")},
                              {"table": "results_long", "sources": sources}, beside=long_path)
    return merged


# -------------------------------------------------------------------------- pivots
def _order(values, preferred: Sequence[str]) -> list:
    values = list(dict.fromkeys(values))
    return [v for v in preferred if v in values] + sorted(v for v in values if v not in preferred)


def format_value(row, ci: str | None) -> str | float:
    """`value` alone (ci=None), "v ± half-width" (ci='pm', Wilson intervals are not
    symmetric: half of their width) or "v [lo, hi]" (ci='interval')."""
    if ci is None:
        return float(row["value"])
    if ci == "pm":
        return f"{row['value']:.1f} ± {(row['ci_high'] - row['ci_low']) / 2:.1f}"
    if ci == "interval":
        return f"{row['value']:.1f} [{row['ci_low']:.1f}, {row['ci_high']:.1f}]"
    raise ValueError(f"ci must be None, 'pm' or 'interval' (got {ci!r})")


def pivot_table(long_df: pd.DataFrame, *, rows: Sequence[str] = ("method", "mode"),
                cols: Sequence[str] = ("test_set", "metric"), metrics: Sequence[str] = ("asr", "over_rejection"),
                ci: str | None = "pm", model: str | None = None, method_order: Sequence[str] = METHOD_ORDER,
                test_sets: Sequence[str] | None = None, orders: dict[str, Sequence] | None = None) -> pd.DataFrame:
    """Generic pivot of the long table: one row per `rows` combination, one column per
    `cols` combination (flattened to "test_set Metric"). Several models in the data add
    a leading `model` row key unless `model` picks one. Rows and columns follow
    `method_order`, MODES, `metrics`, `test_sets` and `orders` ({column: values}); values
    not listed come after, alphabetically."""
    df = long_df[long_df["metric"].isin(metrics)].copy()
    if model is not None:
        df = df[df["model"] == model]
    if test_sets is not None:
        df = df[df["test_set"].isin(test_sets)]
    if df.empty:
        raise ValueError(f"no results for metrics {list(metrics)} (model={model}, test_sets={test_sets})")
    rows = list(rows)
    if df["model"].nunique() > 1 and "model" not in rows:
        rows = ["model"] + rows
    df["cell"] = df.apply(format_value, axis=1, ci=ci)
    dup = df.duplicated(rows + list(cols), keep=False)
    if dup.any():
        raise ValueError(f"several results per cell {rows + list(cols)}: {df[dup][KEY].head(3).to_dict('records')}")
    wide = df.pivot(index=rows, columns=list(cols), values="cell")
    orders = {"method": method_order, "mode": MODES, "metric": list(metrics),
              "test_set": list(test_sets or []), **(orders or {})}
    wide = wide.reindex(index=_reorder(wide.index, rows, orders), columns=_reorder(wide.columns, list(cols), orders))
    wide.columns = [" ".join(METRIC_LABELS.get(p, str(p)) for p in (c if isinstance(c, tuple) else (c,)))
                    for c in wide.columns]
    return wide.reset_index()


def _reorder(index: pd.Index, names: list[str], orders: dict) -> pd.Index:
    tuples = [t if isinstance(t, tuple) else (t,) for t in index]

    def key(t):
        out = []
        for name, v in zip(names, t):
            pref = list(orders.get(name, ()))
            out.append((pref.index(v), "") if v in pref else (len(pref), str(v)))
        return out

    ordered = sorted(tuples, key=key)
    if len(names) == 1:
        return pd.Index([t[0] for t in ordered], name=names[0])
    return pd.MultiIndex.from_tuples(ordered, names=names)


def pivot_main_table(long_df: pd.DataFrame, *, ci: str | None = "pm", model: str | None = None,
                     methods: Sequence[str] | None = None, test_sets: Sequence[str] | None = None) -> pd.DataFrame:
    """Table 1: rows = method x mode, columns = test_set x (ASR, over-rejection)."""
    df = long_df if methods is None else long_df[long_df["method"].isin(methods)]
    return pivot_table(df, metrics=("asr", "over_rejection"), ci=ci, model=model,
                       method_order=list(methods or METHOD_ORDER), test_sets=test_sets)


def pivot_capability_table(long_df: pd.DataFrame, *, ci: str | None = "pm", model: str | None = None,
                           methods: Sequence[str] | None = None, test_sets: Sequence[str] | None = None) -> pd.DataFrame:
    """Table 2: rows = method x mode, columns = test_set (capability)."""
    df = long_df if methods is None else long_df[long_df["method"].isin(methods)]
    return pivot_table(df, metrics=("capability",), ci=ci, model=model,
                       method_order=list(methods or METHOD_ORDER), test_sets=test_sets)


def _relabelled(long_df: pd.DataFrame, method_by_label: dict[str, str], column: str, **kw) -> pd.DataFrame:
    missing = [m for m in method_by_label.values() if m not in set(long_df["method"])]
    if missing:
        raise ValueError(f"no results for methods {missing}")
    df = long_df[long_df["method"].isin(method_by_label.values())].copy()
    df[column] = df["method"].map({m: lab for lab, m in method_by_label.items()})
    return pivot_table(df, rows=(column, "mode"), orders={column: list(method_by_label)}, **kw)


def pivot_top_m_table(long_df: pd.DataFrame, method_by_m: dict[str, str], **kw) -> pd.DataFrame:
    """Table 3: rows = Top-m% x mode, e.g. method_by_m={"12.5%": "rrs-top12.5", ..., "c>0": "rrs"}."""
    return _relabelled(long_df, method_by_m, "top_m", **kw)


def pivot_structure_table(long_df: pd.DataFrame, method_by_structure: dict[str, str], **kw) -> pd.DataFrame:
    """Table 4: rows = dataset structure x mode, e.g. {"Basic": "rrs-basic", "Mirror": "rrs", ...}."""
    return _relabelled(long_df, method_by_structure, "structure", **kw)


def pivot_epoch_table(long_df: pd.DataFrame, method_by_epoch: dict[str, str], **kw) -> pd.DataFrame:
    """RRS by training length: rows = epoch x mode, e.g. {"0 (vanilla)": "vanilla", "1": "rrs_epoch1", ...}."""
    return _relabelled(long_df, method_by_epoch, "epoch", **kw)


def over_rejection_increase(long_df: pd.DataFrame, method: str, baseline: str = "vanilla", *,
                            test_set: str, model: str | None = None, modes: Sequence[str] = MODES) -> float:
    """Mean over `modes` of (method - baseline) over-rejection on `test_set`, in points.

    The paper's headline quantity (+0.88 for RRS, KNOWN from the abstract)."""
    if model is None:
        models = long_df.loc[(long_df["metric"] == "over_rejection") & (long_df["test_set"] == test_set), "model"]
        if models.nunique() > 1:
            raise ValueError(f"several models in the results ({sorted(models.unique())}); pass model=")
    diffs = [rate(long_df, method, mode, "over_rejection", test_set=test_set, model=model)
             - rate(long_df, baseline, mode, "over_rejection", test_set=test_set, model=model) for mode in modes]
    return sum(diffs) / len(diffs)


def rate(long_df: pd.DataFrame, method: str, mode: str, metric: str = "asr", *, test_set: str | None = None,
         model: str | None = None) -> float:
    """The one value of `metric` for `method` in `mode` (on `test_set`, of `model`, when given)."""
    sel = (long_df["method"] == method) & (long_df["mode"] == mode) & (long_df["metric"] == metric)
    for column, value in (("test_set", test_set), ("model", model)):
        if value is not None:
            sel &= long_df[column] == value
    values = long_df.loc[sel, "value"]
    if len(values) != 1:
        raise ValueError(f"need exactly one {metric} result for method={method!r}, mode={mode!r}, "
                         f"test_set={test_set!r}; found {len(values)}")
    return float(values.iloc[0])


def change_from_vanilla(long_df: pd.DataFrame, methods: Sequence[str], *, metrics: Sequence[str] | None = None,
                        baseline: str = "vanilla") -> pd.DataFrame:
    """Points of change from `baseline`: rows (test_set, metric, mode), one column per other method."""
    df = long_df if metrics is None else long_df[long_df["metric"].isin(metrics)]
    wide = df.pivot_table(index=["test_set", "metric", "mode"], columns="method", values="value")
    return wide[[m for m in methods if m != baseline]].sub(wide[baseline], axis=0)


def training_tradeoff(curve: pd.DataFrame, method_by_epoch: dict, epoch_mse: pd.DataFrame, *, test_set: str,
                      model: str | None = None, modes: Sequence[str] = MODES) -> pd.DataFrame:
    """Per epoch of an RRS run: the ASR change from vanilla per mode, the over-rejection
    increase (mean of the modes) and the training-set MSE, overall and per label
    (`epoch_mse`: stages.epoch_mse indexed by epoch)."""
    if list(epoch_mse.index) != list(method_by_epoch):
        raise ValueError(f"training MSE for epochs {list(epoch_mse.index)}, results for {list(method_by_epoch)}")
    rows = []
    for epoch, method in method_by_epoch.items():
        row = {"epoch": epoch}
        for mode in modes:
            row[f"ASR change {mode}"] = (rate(curve, method, mode, test_set=test_set, model=model)
                                         - rate(curve, "vanilla", mode, test_set=test_set, model=model))
        row["over-rejection increase"] = over_rejection_increase(curve, method, "vanilla", test_set=test_set,
                                                                 model=model, modes=modes)
        for column, name in (("mse", "training MSE"), ("mse_harmful", "... harmful"), ("mse_benign", "... benign")):
            row[name] = epoch_mse.loc[epoch, column]
        rows.append(row)
    return pd.DataFrame(rows)
