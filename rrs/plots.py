"""Figures: byte-reproducible PNG + PDF output with a provenance record, and the plots.

Figure 2 of the paper (KNOWN by its caption): t-SNE of harmful (red) and benign (blue)
representations across RRS epochs, epoch 0 = vanilla. The other plots are OURS.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from . import io as rio
from .modes import MODES

HARMFUL_COLOR = "#d62728"
BENIGN_COLOR = "#1f77b4"
DPI = 150
# No dates, no software/version strings: the same figure twice gives the same bytes.
PDF_METADATA = {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}
PNG_METADATA = {"Software": None}


def set_style(context: str = "paper", font_scale: float = 1.1) -> None:
    """The project's seaborn look, with settings that keep saved files reproducible."""
    sns.set_theme(context=context, style="whitegrid", palette="colorblind", font_scale=font_scale)
    plt.rcParams.update({"pdf.fonttype": 42, "svg.hashsalt": "rrs", "figure.dpi": 100,
                         "savefig.bbox": "tight", "axes.spines.top": False, "axes.spines.right": False})


def save_figure(fig, name: str, figures_dir: str | Path, provenance: dict) -> dict[str, Path]:
    """Save `fig` as <name>.png (dpi 150) and <name>.pdf atomically, plus <name>.provenance.json.

    Both files and the record are made in memory, then written together (rrs.io.write_together):
    a figure that fails to render, or a failed write, leaves the previous files as they were.
    """
    figures_dir = Path(figures_dir)
    rendered = {}
    for fmt, meta in (("png", PNG_METADATA), ("pdf", PDF_METADATA)):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=DPI, metadata=meta, bbox_inches="tight")
        rendered[fmt] = buffer.getvalue()
    paths = {fmt: figures_dir / f"{name}.{fmt}" for fmt in rendered}
    paths["provenance"] = rio.write_with_provenance({paths[fmt]: blob for fmt, blob in rendered.items()},
                                                    {**provenance, "figure": name}, beside=paths["png"])
    return paths


def _legend_below(fig, axes, markerscale: float = 1.0) -> None:
    """One legend for the figure, in a row under its panels, where it hides no data.

    A legend inside a panel (matplotlib's loc="best") can sit on a bar or on points when
    the panel has no free corner, as the main-results figure's over-rejection panel had.
    """
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize="small",
               frameon=False, markerscale=markerscale)


def _is_harmful(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return labels
    if labels.dtype.kind in "iu":
        return labels == 1
    bad = set(labels.astype(str)) - {"harmful", "benign"}
    if bad:
        raise ValueError(f"labels must be 'harmful'/'benign' (or bool/1-0); got {sorted(bad)[:5]}")
    return labels.astype(str) == "harmful"


def plot_tsne_panels(points_by_panel: dict, title: str | None = None, *, size: float = 3.0):
    """One scatter panel per entry {panel title: (xy (n, 2), labels)}; harmful red, benign blue."""
    if not points_by_panel:
        raise ValueError("no panels to plot")
    n = len(points_by_panel)
    fig, axes = plt.subplots(1, n, figsize=(size * n, size + 0.7), squeeze=False, layout="constrained")
    for ax, (panel, (xy, labels)) in zip(axes[0], points_by_panel.items()):
        xy = np.asarray(xy, dtype=float)
        harmful = _is_harmful(labels)
        if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) != len(harmful):
            raise ValueError(f"panel {panel!r}: need xy of shape (n, 2) and n labels; got {xy.shape}, {len(harmful)}")
        ax.scatter(*xy[~harmful].T, s=6, c=BENIGN_COLOR, label="benign", alpha=0.7, linewidths=0)
        ax.scatter(*xy[harmful].T, s=6, c=HARMFUL_COLOR, label="harmful", alpha=0.7, linewidths=0)
        ax.set_title(str(panel))
        ax.set_xticks([])
        ax.set_yticks([])
    _legend_below(fig, axes[0], markerscale=2)
    if title:
        fig.suptitle(title)
    return fig


def plot_training_curves(log: list[dict], *, step_key: str = "step", mse_key: str = "mse",
                         penalty_key: str = "penalty", title: str | None = None):
    """RRS training: the representation MSE and the LoRA penalty per step, on two axes."""
    df = pd.DataFrame(log)
    if df.empty:
        raise ValueError("empty training log")
    for key in (mse_key, penalty_key):
        if key not in df:
            raise ValueError(f"training log has no {key!r} (keys: {sorted(df.columns)})")
    x = df[step_key] if step_key in df else np.arange(len(df))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3))
    ax1.plot(x, df[mse_key], color=BENIGN_COLOR)
    ax1.set(xlabel="step", ylabel="MSE(h, target)", title="representation loss")
    ax2.plot(x, df[penalty_key], color=HARMFUL_COLOR)
    ax2.set(xlabel="step", ylabel=r"$\sum \|sBA\|_F^2$", title="LoRA penalty")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_contributions(c, mask_by_m: dict, *, bins: int = 60):
    """Left: distribution of the per-feature contributions c = delta * w_I (0 marked).
    Right: how many features each Top-m% choice keeps (out of len(c))."""
    c = np.asarray(c, dtype=float).ravel()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3))
    ax1.hist(c, bins=bins, color="0.5")
    ax1.axvline(0, color=HARMFUL_COLOR, lw=1)
    ax1.set(xlabel=r"$c_j = \Delta_j \, w_{I,j}$", ylabel="features", title="contributions to the 'I' logit")
    labels = [str(k) for k in mask_by_m]
    kept = []
    for k, mask in mask_by_m.items():
        mask = np.asarray(mask, dtype=bool).ravel()
        if mask.shape != c.shape:
            raise ValueError(f"mask {k!r} has {mask.size} entries for {c.size} features")
        kept.append(int(mask.sum()))
    ax2.bar(labels, kept, color=BENIGN_COLOR)
    ax2.axhline(len(c), color="0.3", lw=1, ls="--")
    ax2.set(xlabel="Top-m%", ylabel="features kept", title=f"kept of {len(c)}")
    fig.tight_layout()
    return fig


def plot_rates(long_df: pd.DataFrame, *, metrics: Sequence[str] = ("asr", "over_rejection"),
               test_set: str | None = None, model: str | None = None,
               methods: Sequence[str] | None = None, modes: Sequence[str] = MODES):
    """Grouped bars of each metric by mode (groups) and method (bars), Wilson 95% error bars."""
    df = long_df[long_df["metric"].isin(metrics)]
    if test_set is not None:
        df = df[df["test_set"] == test_set]
    if model is not None:
        df = df[df["model"] == model]
    if df.empty:
        raise ValueError(f"no results to plot for metrics={list(metrics)}, test_set={test_set}, model={model}")
    if df.duplicated(["method", "mode", "metric"]).any():
        raise ValueError("several results per (method, mode, metric): pick test_set= and model=")
    methods = list(methods or dict.fromkeys(df["method"]))
    modes = [m for m in modes if m in set(df["mode"])]
    colors = sns.color_palette("colorblind", len(methods))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.3), squeeze=False, layout="constrained")
    width = 0.8 / len(methods)
    for ax, metric in zip(axes[0], metrics):
        for i, method in enumerate(methods):
            sub = df[(df["metric"] == metric) & (df["method"] == method)].set_index("mode").reindex(modes)
            x = np.arange(len(modes)) + (i - (len(methods) - 1) / 2) * width
            err = np.vstack([sub["value"] - sub["ci_low"], sub["ci_high"] - sub["value"]])
            ax.bar(x, sub["value"], width, yerr=err, capsize=2, color=colors[i], label=method)
        ax.set_xticks(np.arange(len(modes)), modes)
        ax.set(ylim=(0, 100), ylabel="%", title={"asr": "ASR", "over_rejection": "over-rejection",
                                                   "capability": "capability"}.get(metric, metric))
    _legend_below(fig, axes[0])
    return fig


def plot_rates_by_epoch(long_df: pd.DataFrame, method_by_epoch: dict[int, str], *,
                        metrics: Sequence[str] = ("asr", "over_rejection"), test_set: str | None = None,
                        model: str | None = None, modes: Sequence[str] = MODES, mark_epoch: int | None = None):
    """One panel per metric: the rate after each training epoch (0 = vanilla), a line per
    mode with its Wilson 95% band; `mark_epoch` draws a dotted line (e.g. the profile's run)."""
    df = long_df[long_df["metric"].isin(metrics) & long_df["method"].isin(method_by_epoch.values())]
    if test_set is not None:
        df = df[df["test_set"] == test_set]
    if model is not None:
        df = df[df["model"] == model]
    missing = sorted(set(method_by_epoch.values()) - set(df["method"]))
    if missing:
        raise ValueError(f"no results to plot for methods {missing} (test_set={test_set}, model={model})")
    if df.duplicated(["method", "mode", "metric"]).any():
        raise ValueError("several results per (method, mode, metric): pick test_set= and model=")
    df = df.assign(epoch=df["method"].map({m: e for e, m in method_by_epoch.items()}))
    modes = [m for m in modes if m in set(df["mode"])]
    colors = dict(zip(modes, sns.color_palette("colorblind", len(modes))))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.3), squeeze=False, layout="constrained")
    for ax, metric in zip(axes[0], metrics):
        for mode in modes:
            sub = df[(df["metric"] == metric) & (df["mode"] == mode)].sort_values("epoch")
            ax.plot(sub["epoch"], sub["value"], marker="o", ms=3, color=colors[mode], label=mode)
            ax.fill_between(sub["epoch"], sub["ci_low"], sub["ci_high"], color=colors[mode], alpha=0.15, lw=0)
        if mark_epoch is not None:
            ax.axvline(mark_epoch, color="grey", ls=":", lw=1)
        ax.set(ylim=(0, 100), xlabel="RRS epoch (0 = vanilla)", ylabel="%",
               title={"asr": "ASR", "over_rejection": "over-rejection"}.get(metric, metric))
        ax.set_xticks(sorted(method_by_epoch))
    _legend_below(fig, axes[0])
    return fig


def plot_dataset_structures(structures: dict, *, n_pairs: int = 4):
    """Figure 3 schematic: one panel per structure {name: items}, items from
    rrs.data.dataset_structure (columns label, pair_id, modality, and group).

    Each row is a training pair: harmful (red) left, benign (blue) right; a solid line
    joins a minimally edited twin (same `group`), a dashed one an unrelated benign
    question; circles are spoken items, squares written ones. Question texts are not
    drawn. Counts per modality and label go under each panel.
    """
    from matplotlib.lines import Line2D

    if not structures:
        raise ValueError("no dataset structures to plot")
    fig, axes = plt.subplots(1, len(structures), figsize=(3.2 * len(structures), 3.4), squeeze=False)
    markers = {"audio": "o", "text": "s"}
    for ax, (name, items) in zip(axes[0], structures.items()):
        if "modality" not in items:
            items = items.assign(modality="audio")
        mods = [m for m in markers if m in set(items["modality"])]
        first = items[items["modality"] == mods[0]]
        harmful = first[first["label"] == "harmful"].head(n_pairs)
        for i, (_, h) in enumerate(harmful.iterrows()):
            twin = first[(first["label"] == "benign") & (first["pair_id"] == h["pair_id"])]
            if twin.empty:
                continue
            b = twin.iloc[0]
            same = "group" not in items or h["group"] == b["group"]
            ax.plot([0, 1], [-i, -i], color="0.4", lw=1, ls="-" if same else "--", zorder=1)
            for j, mod in enumerate(mods):
                dx = 0.18 * j
                ax.scatter([0 - dx], [-i], marker=markers[mod], s=60, c=HARMFUL_COLOR, zorder=2)
                ax.scatter([1 + dx], [-i], marker=markers[mod], s=60, c=BENIGN_COLOR, zorder=2)
        counts = items.groupby(["modality", "label"]).size()
        ax.set_title(str(name).capitalize())
        ax.set_xlabel("\n".join(f"{m}: {counts.get((m, 'harmful'), 0)} harmful, "
                                f"{counts.get((m, 'benign'), 0)} benign" for m in mods), fontsize="small")
        ax.set_xlim(-0.6, 1.6)
        ax.set_ylim(-n_pairs + 0.4, 0.6)
        ax.set_xticks([0, 1], ["harmful", "benign"])
        ax.set_yticks([])
        ax.grid(False)
    handles = [Line2D([], [], color="0.4", ls="-", label="minimal-edit twin"),
               Line2D([], [], color="0.4", ls="--", label="unrelated benign"),
               Line2D([], [], marker="o", color="0.4", ls="", label="spoken"),
               Line2D([], [], marker="s", color="0.4", ls="", label="written")]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig
