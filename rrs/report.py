"""The README's results section, generated from the committed `mini` tables (never typed)."""
from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

from . import io as rio
from .paths import REPO_ROOT

START, END = "<!-- results:start -->", "<!-- results:end -->"
WIDTH = 100  # prose lines of the generated section; tables stay one row per line

# (file stem, title, notebook that makes it)
TABLES = [
    ("table1_main_results", "Table 1 · ASR and over-rejection (%)", "05_main_results"),
    ("table2_capability", "Table 2 · Benign capability (%)", "07_capability"),
    ("table3_top_m", "Table 3 · Top-m% ablation", "06_ablations"),
    ("table4_structures", "Table 4 · Dataset-structure ablation", "06_ablations"),
    ("ablation_answer_agreement", "Test answers of each ablation variant that differ from RRS's", "06_ablations"),
    ("table5_data_statistics", "Table 5 · Data statistics (split `excluded`: the one released pair whose "
     "\"benign twin\" is the harmful question itself, used nowhere)", "01_dataset_construction"),
    ("mini_lalm_behaviour", "The vanilla mini model's refusal rates (%)", "00_mini_lalm"),
    ("rrs_representation_shift", "Representation shift after RRS", "04_rrs_training"),
    ("rrs_training_length", "RRS by training length (epochs)", "06_ablations"),
]
FIGURES = [
    ("figure1_representations", "Figure 1 · Vanilla representations per mode", "02_representation_probing"),
    ("figure_main_results", "ASR and over-rejection per mode and method (paper_test)", "05_main_results"),
    ("figure2_rrs_epochs", "Figure 2 · Representations across RRS epochs", "04_rrs_training"),
    ("figure3_dataset_structures", "Figure 3 · Dataset structures", "01_dataset_construction"),
    ("figure_rrs_training_length", "ASR and over-rejection by RRS epoch (paper_test)", "06_ablations"),
]


def results_markdown(root: Path = REPO_ROOT) -> str:
    parts = [textwrap.fill(
        "All numbers below come from the **`mini` profile** (our miniature audio LLM, trained and "
        "evaluated on a 2-core CPU by `./run_all.sh`); they are not the paper's numbers, which "
        "need the 7B models and are not reproduced here. Each table links to the notebook "
        "that makes it; `tables/results_long.csv` holds every ASR, over-rejection and "
        "capability rate with n and a 95% Wilson interval.", WIDTH)]
    summary = root / "results" / "mini" / "summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        headline = s.get("headline", {})
        # write_json sorts keys; `headline_order` (notebook 07) keeps the intended order
        order = [k for k in s.get("headline_order", []) if k in headline]
        keys = order + sorted(k for k in headline if k not in order)
        lines = [textwrap.fill(f"- {k.replace('_', ' ')}: {headline[k]}", WIDTH, subsequent_indent="  ",
                               break_on_hyphens=False) for k in keys]
        if lines:
            parts.append("**Headline** (from `results/mini/summary.json`):\n\n" + "\n".join(lines))
    for stem, title, notebook in TABLES:
        md = root / "tables" / f"{stem}.md"
        if md.with_suffix(".csv").exists() and not md.exists():
            raise FileNotFoundError(f"{md} is missing beside its .csv: the README cannot show {stem}")
        if md.exists():
            prov = rio.provenance_path(md)
            commit = json.loads(prov.read_text()).get("git_commit", "?")[:12] if prov.exists() else "?"
            parts.append(f"### {title}\n\nFrom [`notebooks/{notebook}.ipynb`](notebooks/{notebook}.ipynb) "
                         f"(commit {commit}):\n\n{md.read_text().strip()}")
    for stem, title, notebook in FIGURES:
        png = root / "figures" / f"{stem}.png"
        if png.exists():
            parts.append(f"### {title}\n\n![{title}](figures/{stem}.png)\n\n"
                         f"From [`notebooks/{notebook}.ipynb`](notebooks/{notebook}.ipynb).")
    return "\n\n".join(parts)


def update_readme(readme: Path = REPO_ROOT / "README.md", root: Path = REPO_ROOT) -> bool:
    """Replace the block between the results markers; True when the README changed."""
    text = readme.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{readme} has no {START} ... {END} block")
    new = re.sub(re.escape(START) + ".*?" + re.escape(END),
                 lambda _: f"{START}\n{results_markdown(root)}\n{END}", text, flags=re.S)
    if new != text:
        rio.write_text(readme, new)
    return new != text


# ------------------------------------------------------------------- summary.json
METHOD_NAMES = {"rrs": "RRS", "sft_refusal": "refusal-SFT", "sft_mixed": "mixed-SFT"}
PAPER_OVER_REJECTION_INCREASE = 0.88  # KNOWN, the paper's abstract: RRS on its models


def _signed(x: float) -> str:
    return f"{x:+.1f}"


def make_summary(long, test, *, methods, test_set: str, model: str, profile: str, seed: int,
                 judge, provenance: dict) -> dict:
    """`results/<profile>/summary.json`: every method's change from vanilla on `test_set`
    (ASR and capability per mode, the over-rejection increase averaged over the modes),
    the vanilla rates, the n behind them, and the headline lines the README shows."""
    from .modes import MODES
    from .tables import over_rejection_increase

    if "vanilla" not in methods:
        raise ValueError("the summary compares every method with 'vanilla', which is not among them")
    t = test_set
    long = long[long.model == model]
    if long.empty:
        raise ValueError(f"the results hold no rows of model {model!r}")
    value = long.set_index(["method", "mode", "test_set", "metric"])["value"]
    # capability is scored on the mini model's answer template only (rrs.evaluation.evaluate_method)
    scored = ("asr", "over_rejection") + (("capability",) if (long.metric == "capability").any() else ())
    n_of = test.groupby(["test_set", "label"]).size()
    numbers = {"test_set": t, "n_harmful": int(n_of[(t, "harmful")]), "n_benign": int(n_of[(t, "benign")])}
    for m in methods:
        if m == "vanilla":
            continue
        numbers[f"{m}_asr_change"] = {mode: value[(m, mode, t, "asr")] - value[("vanilla", mode, t, "asr")]
                                      for mode in MODES}
        numbers[f"{m}_over_rejection_increase"] = over_rejection_increase(long, m, "vanilla", test_set=t, model=model)
        if "capability" in scored:
            numbers[f"{m}_capability_change"] = {
                mode: value[(m, mode, t, "capability")] - value[("vanilla", mode, t, "capability")] for mode in MODES}
    numbers["vanilla"] = {metric: {mode: value[("vanilla", mode, t, metric)] for mode in MODES} for metric in scored}

    headline = {"model": f"{model} (profile {profile}, seed {seed}); the paper's numbers are not reproduced",
                "judge": f"{judge.name} v{judge.version} (refusal-phrase list)",
                "test_set": f"{t}: {numbers['n_harmful']} harmful, {numbers['n_benign']} benign questions"}
    if "rrs" in methods:
        asr = numbers["rrs_asr_change"]
        headline["RRS_ASR_vs_vanilla"] = ", ".join(
            f"{mode} {numbers['vanilla']['asr'][mode]:.1f} -> {value[('rrs', mode, t, 'asr')]:.1f} % "
            f"({_signed(asr[mode])} points)" for mode in MODES)
    for m in methods:
        if m != "vanilla":
            extra = (f" (the paper's abstract: +{PAPER_OVER_REJECTION_INCREASE} for RRS on its models)"
                     if m == "rrs" else "")
            headline[f"over-rejection_increase_{METHOD_NAMES.get(m, m)}_vs_vanilla"] = (
                f"{numbers[f'{m}_over_rejection_increase']:+.2f} points, mean over the three modes{extra}")
    if "rrs" in methods:
        headline["RRS_capability_change_vs_vanilla"] = (
            ", ".join(f"{mode} {_signed(numbers['rrs_capability_change'][mode])}" for mode in MODES) + " points"
            if "capability" in scored else
            "not measured: the capability score checks the mini model's answer template; plug a speech-chat "
            "benchmark into rrs.evaluation.SpeechChatBenchmark for this model")
    tables = ["table1_main_results", "table2_capability", "table3_top_m", "table4_structures"]
    return {"headline": headline, "headline_order": list(headline), "numbers": numbers,
            "judge": {"name": judge.name, "version": judge.version},
            "tables": [x for x in tables if "capability" in scored or x != "table2_capability"],
            "results_long": "tables/results_long.csv", "provenance": provenance}
