"""Table writers (atomic, with provenance), the long results file, pivots, headline number."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from rrs import io as rio
from rrs import tables
from rrs.evaluation import LONG_COLUMNS
from rrs.modes import MODES

PROV = {"profile": "mini", "model": "m", "seed": 0, "data_checksum": "abc"}
OR = {"vanilla": (1.0, 2.0, 3.0), "sft": (10.0, 20.0, 30.0), "rrs": (2.0, 2.5, 4.14)}
ASR = {"vanilla": (60.0, 10.0, 80.0), "sft": (5.0, 1.0, 6.0), "rrs": (8.0, 2.0, 9.0)}


def long_df(methods=("rrs", "vanilla", "sft"), test_set="paper_test"):
    rows = []
    for method in methods:
        for i, mode in enumerate(MODES):
            rows.append(["m", method, mode, test_set, "asr", ASR[method][i], ASR[method][i] - 5, ASR[method][i] + 5, 100])
            rows.append(["m", method, mode, test_set, "over_rejection", OR[method][i], 0.0, OR[method][i] + 2, 100])
    return pd.DataFrame(rows, columns=LONG_COLUMNS)


def test_markdown_and_latex_without_extra_dependencies():
    df = pd.DataFrame({"method": ["rrs_top"], "ASR": [12.345], "cell": ["3.0 ± 1.0"]})
    md = tables.to_markdown(df)
    assert md == "| method | ASR | cell |\n|:---|---:|:---|\n| rrs_top | 12.3 | 3.0 ± 1.0 |\n"
    tex = tables.to_latex(df)
    assert r"\begin{tabular}{lrl}" in tex and r"rrs\_top & 12.3 & 3.0 $\pm$ 1.0 \\" in tex
    assert tex.rstrip().endswith(r"\end{tabular}")


def test_save_table_writes_four_files_with_provenance(tmp_path):
    df = pd.DataFrame({"method": ["vanilla", "rrs"], "ASR": [60.04, 8.0]})
    paths = tables.save_table(df, "table1", tmp_path, PROV)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "table1.csv", "table1.md", "table1.provenance.json", "table1.tex"]
    assert (tmp_path / "table1.csv").read_text() == "method,ASR\nvanilla,60.0\nrrs,8.0\n"
    record = json.loads(paths["provenance"].read_text())
    assert record["profile"] == "mini" and record["table"] == "table1"
    assert record["files"]["table1.csv"] == rio.sha256_file(tmp_path / "table1.csv")
    # a pivot's index becomes leading columns
    tables.save_table(df.set_index("method"), "t2", tmp_path, PROV)
    assert (tmp_path / "t2.csv").read_text().startswith("method,ASR\n")


def test_save_table_failure_leaves_old_table_intact(tmp_path, monkeypatch):
    old = pd.DataFrame({"a": [1.0]})
    tables.save_table(old, "t", tmp_path, PROV)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken(*a, **k):
        raise RuntimeError("boom while rendering")

    monkeypatch.setattr(tables, "to_latex", broken)
    with pytest.raises(RuntimeError, match="boom"):
        tables.save_table(pd.DataFrame({"a": [2.0]}), "t", tmp_path, PROV)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_failure_mid_write_leaves_no_partial_file(tmp_path, monkeypatch):
    tables.save_table(pd.DataFrame({"a": [1.0]}), "t", tmp_path, PROV)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real = Path.write_text

    def half_then_fail(self, text, *a, **k):
        real(self, text[: len(text) // 2], *a, **k)
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        tables.save_table(pd.DataFrame({"a": [2.0, 3.0]}), "t", tmp_path, PROV)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before   # no .tmp left either


def test_a_failed_later_file_leaves_the_whole_old_table(tmp_path, monkeypatch):
    tables.save_table(pd.DataFrame({"a": [1.0]}), "t", tmp_path, PROV)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real = Path.write_text

    def markdown_fails(self, text, *a, **k):   # the CSV is written, then the Markdown file fails
        if self.name.startswith(".t.md."):
            raise OSError("disk full")
        return real(self, text, *a, **k)

    monkeypatch.setattr(Path, "write_text", markdown_fails)
    with pytest.raises(OSError, match="disk full"):
        tables.save_table(pd.DataFrame({"a": [2.0, 3.0]}), "t", tmp_path, PROV)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before   # no new CSV beside the old rest


def test_append_long_replaces_same_keys_and_sorts(tmp_path):
    path = tmp_path / "tables" / "results_long.csv"
    tables.append_long(path, long_df(methods=("vanilla",)), PROV)
    tables.append_long(path, long_df(methods=("rrs",)), PROV)
    newer = long_df(methods=("vanilla",))
    newer["value"] = 99.0
    merged = tables.append_long(path, newer.iloc[:2], PROV)
    back = pd.read_csv(path)
    assert list(back.columns) == LONG_COLUMNS and len(back) == 12
    assert back.equals(back.sort_values(tables.KEY).reset_index(drop=True))
    v = back[(back.method == "vanilla") & (back["mode"] == "audio-text")].set_index("metric")["value"]
    assert v["asr"] == 99.0 and v["over_rejection"] == 99.0
    assert (back[(back.method == "vanilla") & (back["mode"] == "text-only")]["value"] != 99.0).all()
    assert len(merged) == 12 and not list(path.parent.glob("*.tmp"))
    with pytest.raises(ValueError, match="lack columns"):
        tables.append_long(path, pd.DataFrame({"model": ["m"]}), PROV)


def test_append_long_records_each_notebook_that_wrote_rows(tmp_path):
    import json

    from rrs import io as rio

    path = tmp_path / "results_long.csv"
    tables.append_long(path, long_df(methods=("vanilla",)), {**PROV, "notebook": "05", "seed": 0})
    tables.append_long(path, long_df(methods=("rrs",)), {**PROV, "notebook": "06", "seed": 0})
    tables.append_long(path, long_df(methods=("rrs",)), {**PROV, "notebook": "06", "seed": 1})
    record = json.loads(rio.provenance_path(path).read_text())
    assert {k: v["seed"] for k, v in record["sources"].items()} == {"05": 0, "06": 1}
    assert record["files"] == {"results_long.csv": rio.sha256_file(path)}
    path.unlink()                                     # a new file starts a new record
    tables.append_long(path, long_df(methods=("rrs",)), {**PROV, "notebook": "07"})
    assert set(json.loads(rio.provenance_path(path).read_text())["sources"]) == {"07"}
    rio.provenance_path(path).write_text("[]")
    with pytest.raises(ValueError, match=r"results_long\.provenance\.json: not a readable provenance record"):
        tables.append_long(path, long_df(), PROV)


def test_append_long_names_a_broken_results_file(tmp_path):
    path = tmp_path / "results_long.csv"
    path.write_text("model,method\nm,rrs\n")
    with pytest.raises(ValueError, match=r"results_long\.csv lack columns \['mode'"):
        tables.append_long(path, long_df(), PROV)
    path.write_text('model,method\n"m,rrs\n')
    with pytest.raises(ValueError, match=r"results_long\.csv: not a readable results CSV"):
        tables.append_long(path, long_df(), PROV)
    assert path.read_text() == 'model,method\n"m,rrs\n'   # left as it was


def test_append_long_keeps_numbers_it_does_not_replace_to_the_last_digit(tmp_path):
    # pandas' default float parser reads 44.233196687777834 as 44.23319668777784
    path = tmp_path / "results_long.csv"
    df = long_df(methods=("rrs",))
    df["ci_low"] = 44.233196687777834
    tables.append_long(path, df, PROV)
    first = path.read_bytes()
    tables.append_long(path, long_df(methods=("vanilla",)), PROV)
    tables.append_long(path, long_df(methods=("vanilla",)), PROV)
    assert b"44.233196687777834" in first and path.read_bytes().count(b"44.233196687777834") == len(df)


def test_pivot_main_table_layout_and_cells():
    t = tables.pivot_main_table(long_df())
    assert list(t.columns) == ["method", "mode", "paper_test ASR", "paper_test Over-rej."]
    assert list(zip(t.method, t["mode"]))[:4] == [("vanilla", "audio-text"), ("vanilla", "text-only"),
                                                  ("vanilla", "audio-only"), ("sft", "audio-text")]
    assert t.iloc[0]["paper_test ASR"] == "60.0 ± 5.0"
    plain = tables.pivot_main_table(long_df(), ci=None)
    assert plain.iloc[-1]["paper_test Over-rej."] == pytest.approx(4.14)
    both = pd.concat([long_df(), long_df(test_set="advbench")])
    with_intervals = tables.pivot_main_table(both, test_sets=["paper_test", "advbench"], ci="interval")
    assert with_intervals.iloc[0]["paper_test ASR"] == "60.0 [55.0, 65.0]"
    cols = with_intervals.columns
    assert list(cols)[2:] == ["paper_test ASR", "paper_test Over-rej.", "advbench ASR", "advbench Over-rej."]
    two_models = pd.concat([long_df(), long_df().assign(model="m2")])
    assert tables.pivot_main_table(two_models).columns[0] == "model"
    with pytest.raises(ValueError, match="no results"):
        tables.pivot_capability_table(long_df())


def test_capability_top_m_and_structure_tables():
    cap = long_df(methods=("vanilla", "rrs"))
    cap = cap[cap.metric == "asr"].assign(metric="capability")
    t2 = tables.pivot_capability_table(cap, ci=None)
    assert list(t2.columns) == ["method", "mode", "paper_test Capability"] and len(t2) == 6
    # each method its own numbers (value + 10 x its rank), so a label on another method's rows shows
    df = pd.concat([long_df(methods=("rrs",)).assign(method=m, value=lambda d, k=k: d.value + 10 * k)
                    for k, m in enumerate(("rrs-top12.5", "rrs-top50", "rrs"))])
    t3 = tables.pivot_top_m_table(df, {"12.5%": "rrs-top12.5", "50%": "rrs-top50", "c>0": "rrs"}, ci=None)
    assert list(t3.columns[:2]) == ["top_m", "mode"]
    assert list(t3.top_m.unique()) == ["12.5%", "50%", "c>0"]
    base = long_df(methods=("rrs",)).set_index(["mode", "metric"]).value
    for k, label in enumerate(("12.5%", "50%", "c>0")):
        rows = t3[t3.top_m == label].set_index("mode")
        assert rows["paper_test ASR"].to_dict() == pytest.approx(
            {mode: base[(mode, "asr")] + 10 * k for mode in rows.index}), label
    t4 = tables.pivot_structure_table(df.replace({"rrs-top12.5": "rrs-basic"}),
                                      {"Basic": "rrs-basic", "Mirror": "rrs"})
    assert list(t4.structure.unique()) == ["Basic", "Mirror"]
    with pytest.raises(ValueError, match="rrs-parallel"):
        tables.pivot_structure_table(df, {"Parallel": "rrs-parallel"})


def test_epoch_table_keeps_the_given_epoch_order():
    df = pd.concat([long_df(methods=("rrs",)).assign(method=m) for m in ("vanilla", "rrs_epoch1", "rrs", "rrs_epoch10")])
    t = tables.pivot_epoch_table(df, {"0 (vanilla)": "vanilla", "1": "rrs_epoch1", "2 (run)": "rrs",
                                      "10": "rrs_epoch10"}, ci=None)
    assert list(t.columns[:2]) == ["epoch", "mode"]
    assert list(t.epoch.unique()) == ["0 (vanilla)", "1", "2 (run)", "10"]   # not sorted as text
    with pytest.raises(ValueError, match="rrs_epoch3"):
        tables.pivot_epoch_table(df, {"3": "rrs_epoch3"})


def test_over_rejection_increase_is_mean_of_mode_differences():
    df = long_df()
    # (2-1 + 2.5-2 + 4.14-3) / 3 = 0.88
    assert tables.over_rejection_increase(df, "rrs", test_set="paper_test") == pytest.approx(0.88)
    assert tables.over_rejection_increase(df, "sft", test_set="paper_test") == pytest.approx(18.0)
    with pytest.raises(ValueError, match="mode='audio-only'"):
        tables.over_rejection_increase(df[df["mode"] != "audio-only"], "rrs", test_set="paper_test")
    with pytest.raises(ValueError, match="several models"):
        tables.over_rejection_increase(pd.concat([df, df.assign(model="m2")]), "rrs", test_set="paper_test")


def test_rate_and_change_from_vanilla_read_the_right_cells():
    df = long_df()
    assert tables.rate(df, "rrs", "audio-only") == ASR["rrs"][2]
    assert tables.rate(df, "sft", "text-only", "over_rejection") == OR["sft"][1]
    with pytest.raises(ValueError, match="found 0"):
        tables.rate(df, "rrs", "audio-only", test_set="advbench")
    with pytest.raises(ValueError, match="found 2"):
        tables.rate(pd.concat([df, df.assign(model="m2")]), "rrs", "audio-only")
    assert tables.rate(pd.concat([df, df.assign(model="m2", value=0.0)]), "rrs", "audio-only", model="m") == 9.0
    change = tables.change_from_vanilla(df, ["vanilla", "rrs", "sft"], metrics=("asr",))
    assert list(change.columns) == ["rrs", "sft"] and set(change.index.get_level_values("metric")) == {"asr"}
    for i, mode in enumerate(MODES):
        assert change.loc[("paper_test", "asr", mode), "sft"] == pytest.approx(ASR["sft"][i] - ASR["vanilla"][i])


def test_training_tradeoff_per_epoch():
    df = pd.concat([long_df(("vanilla", "rrs")), long_df(("sft",)).assign(method="rrs_epoch2")])
    mse = pd.DataFrame({"epoch": [0, 1, 2], "mse": [3.0, 2.0, 1.0], "mse_harmful": [4.0, 3.0, 2.5],
                        "mse_benign": [2.0, 1.0, 0.5]}).set_index("epoch")
    by_epoch = {0: "vanilla", 1: "rrs", 2: "rrs_epoch2"}
    out = tables.training_tradeoff(df, by_epoch, mse, test_set="paper_test")
    assert list(out.epoch) == [0, 1, 2]
    assert out.loc[0, "ASR change audio-text"] == 0 and out.loc[0, "over-rejection increase"] == 0
    assert out.loc[1, "ASR change audio-only"] == pytest.approx(ASR["rrs"][2] - ASR["vanilla"][2])
    assert out.loc[2, "over-rejection increase"] == pytest.approx(18.0)  # the sft numbers, as epoch 2
    assert list(out["... harmful"]) == [4.0, 3.0, 2.5] and list(out["training MSE"]) == [3.0, 2.0, 1.0]
    with pytest.raises(ValueError, match="training MSE for epochs"):
        tables.training_tradeoff(df, by_epoch, mse.iloc[:2], test_set="paper_test")
