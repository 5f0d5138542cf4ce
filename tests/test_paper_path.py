"""The `paper` profile's code path, end to end: notebooks 02 to 07 under papermill on tiny
randomly initialised Qwen2-Audio and Qwen2.5-Omni thinker models saved to folders, on the CPU
in float32, with a few training and test pairs, one epoch and a temporary cache and output root.

The 7B weights are not used (no hub access); what runs is the same code the paper profile
runs: its hyper-parameters (LoRA r=16, alpha=4, dropout 0.1, lr 5e-5, batch 4 x 2, ...), the
adapters of both architectures, extraction, feature selection, RRS and both SFT baselines,
generation and judging, the ablations, every table and figure and the summary. The bars of
notebook 04 are not asserted (check_bars=False): an untrained random model has no refusal
zone to move toward. Notebooks 00 (the mini model) and 01 (data only, no model) are the
`mini` run's and the test suite's.

The third paper model, Qwen-Audio-Chat, runs code from its hub repository written for
transformers 4.x, so its case is skipped here (transformers 5). In its own environment
(rrs/models/qwen_audio_chat.py) it runs on a tiny random model built from that code:

    RRS_QWEN_AUDIO_REMOTE_CODE=DIR ENV/bin/python -m pytest tests/test_paper_path.py -k qwen_audio_chat

where DIR holds the remote code's Python files (scripts/qwen_audio_chat_check.py lists them).

RRS_TEST_DEVICE, RRS_TEST_DTYPE and RRS_TEST_EPOCHS replace the CPU, float32 and one epoch, e.g.
for the profile's own bfloat16, on a GPU where there is one:

    RRS_TEST_DEVICE=cuda RRS_TEST_DTYPE=bfloat16 RRS_TEST_EPOCHS=4 .venv/bin/python -m pytest tests/test_paper_path.py

bfloat16 needs 4 epochs: at the paper's learning rate one step of these random models moves
h(x) less than bfloat16 rounds, so notebook 04's check that RRS lowered its loss fails.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from rrs.paths import REPO_ROOT

NOTEBOOKS = ("02_representation_probing", "03_feature_selection", "04_rrs_training", "05_main_results",
             "06_ablations", "07_capability")
COMMON = {"profile": "paper", "device": os.environ.get("RRS_TEST_DEVICE", "cpu"),
          "dtype": os.environ.get("RRS_TEST_DTYPE", "float32"), "n_train": 4, "n_test": 6,
          "epochs": int(os.environ.get("RRS_TEST_EPOCHS", "1"))}
EXTRA = {"04_rrs_training": {"check_bars": False}}
# the paper profile's learning rate decays over the run, so notebook 06's run of twice the epochs is a
# run of its own: all its epochs are judged (rrs_epoch1 is not Table 1's 1-epoch `rrs`)
METHODS = {"vanilla", "sft_refusal", "sft_mixed", "rrs", "rrs_top12.5", "rrs_top25", "rrs_top50", "rrs_basic",
           "rrs_parallel", "rrs_mirror_half", *(f"rrs_epoch{e}" for e in range(1, 2 * COMMON["epochs"] + 1))}


def _save_tiny(arch: str, folder: Path) -> Path:
    import torch

    torch.set_num_threads(1)
    if arch == "qwen_audio_chat":
        import importlib.util

        spec = importlib.util.spec_from_file_location("check", REPO_ROOT / "scripts" / "qwen_audio_chat_check.py")
        check = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(check)
        return check.build_tiny_model(Path(os.environ["RRS_QWEN_AUDIO_REMOTE_CODE"]), folder)
    from rrs.models.qwen2_audio import random_tiny_qwen2_audio
    from rrs.models.qwen25_omni import random_tiny_qwen25_omni

    build = random_tiny_qwen2_audio if arch == "qwen2_audio" else random_tiny_qwen25_omni
    model, processor = build(seed=0, window_seconds=8.0)  # every spoken question fits 8 s
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _remote_code_env() -> bool:
    from rrs.models.base import transformers_major

    return transformers_major() < 5 and bool(os.environ.get("RRS_QWEN_AUDIO_REMOTE_CODE"))


QWEN_AUDIO_CHAT = pytest.param("qwen_audio_chat", marks=pytest.mark.skipif(
    not _remote_code_env(), reason="Qwen-Audio-Chat's remote code needs transformers 4.x and "
    "RRS_QWEN_AUDIO_REMOTE_CODE (see the module docstring)"))


@pytest.fixture
def paper_env(tmp_path, monkeypatch):
    """Temporary cache (reusing the real speech cache through a symlink) and output root."""
    real_audio = Path(os.environ.get("RRS_CACHE_DIR", REPO_ROOT / "cache")) / "audio"
    cache = tmp_path / "cache"
    cache.mkdir()
    if real_audio.is_dir():
        (cache / "audio").symlink_to(real_audio.resolve(), target_is_directory=True)
    monkeypatch.setenv("RRS_CACHE_DIR", str(cache))
    monkeypatch.setenv("RRS_OUTPUT_ROOT", str(tmp_path / "out"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen2_audio", "omni", QWEN_AUDIO_CHAT])
def test_paper_profile_notebooks(arch, paper_env):
    import papermill as pm

    model = _save_tiny(arch, paper_env / f"tiny-{arch}")
    remote = {"trust_remote_code": True} if arch == "qwen_audio_chat" else {}
    for name in NOTEBOOKS:
        pm.execute_notebook(str(REPO_ROOT / "notebooks" / f"{name}.ipynb"), str(paper_env / f"{name}.ipynb"),
                            parameters={**COMMON, "model": str(model), **remote, **EXTRA.get(name, {})},
                            kernel_name="python3", cwd=str(REPO_ROOT / "notebooks"), progress_bar=False)

    out = paper_env / "out"
    for figure in ("figure1_representations", "figure_feature_selection", "figure_rrs_training_curves",
                   "figure2_rrs_epochs"):
        for ext in ("png", "pdf"):
            assert (out / "figures" / f"{figure}.{ext}").is_file(), (figure, ext)
        assert (out / "figures" / f"{figure}.provenance.json").is_file()
    probe = pd.read_csv(out / "tables" / "probe_accuracy.csv")
    assert list(probe["mode"]) == ["audio-text", "text-only", "audio-only"]
    shift = pd.read_csv(out / "tables" / "rrs_representation_shift.csv")
    assert list(shift.columns) == ["mode", "label", "p_I_vanilla", "p_I_rrs", "dist_vanilla", "dist_rrs", "n"]
    assert len(shift) == 6 and shift[["p_I_vanilla", "p_I_rrs"]].stack().between(0, 1).all()
    # RRS and both SFT baselines were trained with the paper's LoRA settings and cached
    import json

    kinds = {}
    for meta in (paper_env / "cache" / "checkpoints").glob("*/epoch_1/rrs_checkpoint.json"):
        record = json.loads(meta.read_text())
        kinds[record["kind"]] = record
    assert set(kinds) == {"rrs", "sft_refusal", "sft_mixed"}
    assert all(r["model_id"] == str(model.resolve()) for r in kinds.values())
    assert {(r["train_config"]["lora_r"], r["train_config"]["lora_alpha"]) for r in kinds.values()} == {(16, 4)}

    # 05-07: every method x mode x test set, judged on the capped test sets
    long = pd.read_csv(out / "tables" / "results_long.csv")
    assert set(long.method) == METHODS and set(long.model) == {str(model)}
    assert set(long["mode"]) == {"audio-text", "text-only", "audio-only"}
    assert set(long.test_set) == {"paper_test", "advbench", "figstep"}
    assert long.value.between(0, 100).all() and (long.ci_low <= long.value).all() and (long.value <= long.ci_high).all()
    questions = pd.read_csv(paper_env / "cache" / "data" / "paper-seed0.csv")
    assert (questions.groupby("test_set").group.nunique() == COMMON["n_test"]).all()  # every test set capped
    counts = questions.groupby(["test_set", "label"]).size()
    for metric, label in (("asr", "harmful"), ("over_rejection", "benign")):
        rows = long[long.metric == metric]
        assert len(rows) and (rows.n == [counts[t, label] for t in rows.test_set]).all(), metric
    # the mini template's capability score is not applied to these models (no Table 2)
    assert "capability" not in set(long.metric)
    # every notebook that wrote rows is on record, with the dtype and the caps it ran with
    sources = json.loads((out / "tables" / "results_long.provenance.json").read_text())["sources"]
    assert set(sources) == {"05_main_results", "06_ablations", "07_capability"}
    assert {(r["profile"], r["model"], r["run"]["dtype"], r["run"]["max_test_pairs"]) for r in sources.values()} == {
        ("paper", str(model), COMMON["dtype"], COMMON["n_test"])}
    assert not (out / "tables" / "table2_capability.csv").exists()
    for table in ("table1_main_results", "table3_top_m", "table4_structures",
                  "rrs_training_length", "ablation_answer_agreement"):
        for ext in ("csv", "md", "tex", "provenance.json"):
            assert (out / "tables" / f"{table}.{ext}").is_file(), (table, ext)
    for figure in ("figure_main_results", "figure_rrs_training_length"):
        assert (out / "figures" / f"{figure}.png").is_file() and (out / "figures" / f"{figure}.pdf").is_file()
    summary = json.loads((out / "results" / "paper" / "summary.json").read_text())
    assert summary["provenance"]["profile"] == "paper" and summary["provenance"]["model"] == str(model)
    assert summary["headline"]["RRS_capability_change_vs_vanilla"].startswith("not measured")
    assert "table2_capability" not in summary["tables"]
