"""Figures: reproducible bytes, provenance, and what each plot draws."""
from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from rrs import plots  # noqa: E402
from rrs.evaluation import LONG_COLUMNS  # noqa: E402

PROV = {"profile": "mini", "model": "m", "seed": 0, "data_checksum": "abc"}


def tsne_fig():
    xy = np.arange(40, dtype=float).reshape(20, 2)
    labels = ["harmful"] * 8 + ["benign"] * 12
    return plots.plot_tsne_panels({"epoch 0": (xy, labels), "epoch 1": (xy[::-1], labels)}, "t-SNE")


def test_save_figure_is_byte_reproducible_with_provenance(tmp_path):
    plots.set_style()
    outs = []
    for d in ("a", "b"):
        fig = tsne_fig()
        paths = plots.save_figure(fig, "figure2", tmp_path / d, PROV)
        plt.close(fig)
        outs.append({k: p.read_bytes() for k, p in paths.items()})
    assert outs[0] == outs[1]
    assert outs[0]["png"].startswith(b"\x89PNG") and outs[0]["pdf"].startswith(b"%PDF")
    assert b"CreationDate" not in outs[0]["pdf"] and b"Software" not in outs[0]["png"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "figure2.pdf", "figure2.png", "figure2.provenance.json"]
    record = json.loads(outs[0]["provenance"])
    assert record["figure"] == "figure2" and record["profile"] == "mini"
    assert set(record["files"]) == {"figure2.png", "figure2.pdf"}


def test_save_figure_failure_keeps_old_file(tmp_path, monkeypatch):
    fig = tsne_fig()
    plots.save_figure(fig, "f", tmp_path, PROV)
    before = (tmp_path / "f.png").read_bytes()

    def broken(*a, **k):
        raise RuntimeError("renderer died")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(RuntimeError, match="renderer died"):
        plots.save_figure(fig, "f", tmp_path, PROV)
    assert (tmp_path / "f.png").read_bytes() == before
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))
    plt.close(fig)


def test_save_figure_writes_both_formats_or_neither(tmp_path, monkeypatch):
    fig = tsne_fig()
    plots.save_figure(fig, "f", tmp_path, PROV)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real = fig.savefig

    def pdf_fails(target, format=None, **kw):
        if format == "pdf":
            raise RuntimeError("no PDF backend")
        return real(target, format=format, **kw)

    monkeypatch.setattr(fig, "savefig", pdf_fails)
    fig.axes[0].set_title("changed")   # a new PNG would differ from the old one
    with pytest.raises(RuntimeError, match="no PDF backend"):
        plots.save_figure(fig, "f", tmp_path, PROV)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    plt.close(fig)


def test_tsne_colours_harmful_red_benign_blue():
    fig = tsne_fig()
    ax = fig.axes[0]
    colours = {c.get_label(): to_hex(c.get_facecolor()[0]) for c in ax.collections}
    assert colours == {"harmful": "#d62728", "benign": "#1f77b4"}
    sizes = {c.get_label(): len(c.get_offsets()) for c in ax.collections}
    assert sizes == {"harmful": 8, "benign": 12}
    assert len(fig.axes) == 2 and fig.axes[1].get_title() == "epoch 1"
    plt.close(fig)
    with pytest.raises(ValueError, match="harmful"):
        plots.plot_tsne_panels({"x": (np.zeros((2, 2)), ["bad", "benign"])}, "t")


def test_training_curves_two_axes():
    log = [{"step": i, "mse": 1 / (i + 1), "penalty": 0.01 * i} for i in range(5)]
    fig = plots.plot_training_curves(log)
    a, b = fig.axes
    assert list(a.lines[0].get_ydata()) == [r["mse"] for r in log]
    assert list(b.lines[0].get_ydata()) == [r["penalty"] for r in log]
    plt.close(fig)
    with pytest.raises(ValueError, match="no 'penalty'"):
        plots.plot_training_curves([{"step": 0, "mse": 1.0}])


def test_contributions_counts_kept_features():
    c = np.array([-2.0, -1.0, 0.5, 1.0, 3.0, 4.0])
    masks = {"c>0": c > 0, "50%": c >= 1.0, "12.5%": c >= 4.0}
    fig = plots.plot_contributions(c, masks)
    heights = [p.get_height() for p in fig.axes[1].patches]
    assert heights == [4, 3, 1]
    plt.close(fig)
    with pytest.raises(ValueError, match="3 entries for 6"):
        plots.plot_contributions(c, {"bad": [True, False, True]})


def test_plot_rates_bar_heights():
    rows = []
    for method, base in (("vanilla", 50.0), ("rrs", 10.0)):
        for i, mode in enumerate(("audio-text", "text-only", "audio-only")):
            for metric in ("asr", "over_rejection"):
                v = base + i + (0 if metric == "asr" else 0.5)
                rows.append(["m", method, mode, "t", metric, v, v - 1, v + 2, 10])
    fig = plots.plot_rates(pd.DataFrame(rows, columns=LONG_COLUMNS))
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == [50.0, 51.0, 52.0, 10.0, 11.0, 12.0]
    assert fig.axes[1].get_title() == "over-rejection"
    plt.close(fig)


def _legend_overlaps_a_panel(fig) -> bool:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert len(legends) == 1, "one legend per figure"
    box = legends[0].get_window_extent(renderer)
    return any(box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes)


def test_the_legend_sits_outside_every_panel():
    # the main-results figure's legend once covered the refusal-SFT bar of its over-rejection panel
    rows = []
    for method in ("vanilla", "sft_refusal", "sft_mixed", "rrs"):
        for mode in ("audio-text", "text-only", "audio-only"):
            for metric in ("asr", "over_rejection"):
                rows.append(["m", method, mode, "t", metric, 99.0, 97.0, 100.0, 10])
    df = pd.DataFrame(rows, columns=LONG_COLUMNS)
    by_epoch = df[df.method.isin(["vanilla", "rrs"])]
    for fig in (plots.plot_rates(df), tsne_fig(),
                plots.plot_rates_by_epoch(by_epoch, {0: "vanilla", 1: "rrs"}, mark_epoch=1)):
        assert not _legend_overlaps_a_panel(fig)
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert labels in (["vanilla", "sft_refusal", "sft_mixed", "rrs"], ["benign", "harmful"],
                          ["audio-text", "text-only", "audio-only"])
        plt.close(fig)
    # the check can fail: a legend placed in a panel, as before, overlaps it
    fig, ax = plt.subplots()
    ax.bar([0], [99.0], label="a")
    ax.legend(loc="upper left")
    assert _legend_overlaps_a_panel(fig)
    plt.close(fig)


def test_rates_by_epoch_draws_one_line_per_mode_in_epoch_order():
    rows = []
    for epoch, method in ((0, "vanilla"), (1, "rrs_epoch1"), (2, "rrs")):
        for i, mode in enumerate(("audio-text", "text-only", "audio-only")):
            for metric in ("asr", "over_rejection"):
                v = 90.0 - 10 * epoch - i if metric == "asr" else 1.0 + epoch + i
                rows.append(["m", method, mode, "t", metric, v, v - 1, v + 2, 10])
    df = pd.DataFrame(rows[::-1], columns=LONG_COLUMNS)   # rows in no particular order
    fig = plots.plot_rates_by_epoch(df, {0: "vanilla", 1: "rrs_epoch1", 2: "rrs"}, mark_epoch=2)
    asr_ax, over_ax = fig.axes
    lines = [ln for ln in asr_ax.lines if ln.get_label() in ("audio-text", "text-only", "audio-only")]
    assert [ln.get_label() for ln in lines] == ["audio-text", "text-only", "audio-only"]
    assert list(lines[0].get_xdata()) == [0, 1, 2] and list(lines[0].get_ydata()) == [90.0, 80.0, 70.0]
    assert list(over_ax.lines[2].get_ydata()) == [3.0, 4.0, 5.0]
    assert over_ax.get_title() == "over-rejection"
    plt.close(fig)
    with pytest.raises(ValueError, match="rrs_epoch3"):
        plots.plot_rates_by_epoch(df, {0: "vanilla", 3: "rrs_epoch3"})


def test_dataset_structures_schematic():
    def items(structure):
        h = pd.DataFrame({"label": "harmful", "pair_id": ["p0", "p1"], "group": [0, 1]})
        b = pd.DataFrame({"label": "benign", "pair_id": ["p0", "p1"],
                          "group": [1, 0] if structure == "basic" else [0, 1]})
        out = pd.concat([h, b], ignore_index=True).assign(modality="audio")
        if structure == "parallel":
            out = pd.concat([out, out.assign(modality="text")], ignore_index=True)
        return out

    fig = plots.plot_dataset_structures({s: items(s) for s in ("basic", "mirror", "parallel")})
    basic, mirror, parallel = fig.axes
    assert [ln.get_linestyle() for ln in basic.lines] == ["--", "--"]
    assert [ln.get_linestyle() for ln in mirror.lines] == ["-", "-"]
    assert len(mirror.collections) == 4 and len(parallel.collections) == 8   # both forms drawn
    assert parallel.get_title() == "Parallel" and "text: 2 harmful, 2 benign" in parallel.get_xlabel()
    plt.close(fig)
