"""rrs.stages: cached stage artifacts (safety features, RRS / SFT checkpoints, method names)."""
from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
import torch

from rrs import stages
from rrs.audio import save_audio
from rrs.profiles import TrainConfig, get_profile

FAST = TrainConfig(lora_r=2, lora_alpha=4, lora_dropout=0.0, epochs=1, lr=1e-3, batch_size=8, grad_accum=1)


@pytest.fixture
def P():
    return dataclasses.replace(get_profile("mini"), train=FAST, eval_batch_size=8, max_new_tokens=3)


@pytest.fixture
def questions(tiny_items, tmp_path, tmp_rrs_cache):
    """tiny_items as a prepared questions table: clips on disk, three train pairs, one test pair."""
    rows = []
    for i, row in enumerate(tiny_items.itertuples(index=False)):
        path = save_audio(tmp_path / "clips" / f"{row.id}.wav", row.audio)
        pair = int(row.id[1:])
        rows.append({"id": row.id, "text": row.text, "label": row.label, "category": "c", "source": "rrs_paper",
                     "pair_id": f"p{pair}", "group": f"g{pair}", "split": "test" if pair == 3 else "train",
                     "audio_path": str(path), "fits_window": True})
    return pd.DataFrame(rows)


@pytest.fixture
def adapter(tiny_qwen2_audio_adapter):
    return tiny_qwen2_audio_adapter


def count_calls(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_safety_features_are_cached_and_keyed_by_top_m(adapter, questions, P, monkeypatch):
    import rrs.representations as R

    calls = count_calls(monkeypatch, R, "safety_features")
    f1 = stages.safety_features(adapter, questions, P, 0, progress=False)
    f2 = stages.safety_features(adapter, questions, P, 0, progress=False)
    assert len(calls) == 1 and calls[0]["mode"] == "audio-text"
    torch.testing.assert_close(f1.direction, f2.direction)
    assert torch.equal(f1.mask, f1.contributions > 0)
    f25 = stages.safety_features(adapter, questions, P, 0, top_m=25, progress=False)
    assert len(calls) == 2 and f25.top_m == 25 and int(f25.mask.sum()) == adapter.hidden_size // 4
    assert stages.features_path(adapter, questions, 25) != stages.features_path(adapter, questions, None)
    # only the training split goes into Δ: the test pair changes nothing
    other = questions.assign(text=[t + "!" if s == "test" else t for t, s in zip(questions.text, questions.split)])
    assert stages.features_path(adapter, other) == stages.features_path(adapter, questions)


def test_basic_takes_its_direction_from_its_own_questions(adapter, questions, P, monkeypatch):
    import rrs.representations as R

    seen = []
    original = R.safety_features
    monkeypatch.setattr(R, "safety_features", lambda adapter, items, **kw: seen.append(set(items.id)) or
                        original(adapter, items, **kw))
    stages.safety_features(adapter, questions, P, 0, progress=False)
    basic = stages.safety_features(adapter, questions, P, 0, structure="basic", progress=False)
    # Parallel adds only written copies of Mirror's questions: the same Δ, one cache file
    assert stages.features_path(adapter, questions, structure="parallel") == stages.features_path(adapter, questions)
    assert stages.features_path(adapter, questions, structure="basic") != stages.features_path(adapter, questions)
    items = stages.training_items(questions, "basic", 0)
    assert seen == [set(stages.train_questions(questions).id), set(items.id)]
    assert basic.direction_hash != stages.safety_features(adapter, questions, P, 0, progress=False).direction_hash


def test_rrs_checkpoint_is_trained_once(adapter, questions, P, monkeypatch):
    import rrs.training as T

    calls = count_calls(monkeypatch, T, "train_rrs")
    ckpt = stages.rrs_checkpoint(adapter, questions, P, 0, progress=False)
    assert ckpt.name == "epoch_1" and (ckpt / "adapter_model.safetensors").is_file()
    assert adapter.peft_model is None  # the adapter is left vanilla
    mtime = (ckpt / "adapter_model.safetensors").stat().st_mtime_ns
    assert stages.rrs_checkpoint(adapter, questions, P, 0, progress=False) == ckpt
    assert len(calls) == 1 and (ckpt / "adapter_model.safetensors").stat().st_mtime_ns == mtime
    meta = json.loads((ckpt / "rrs_checkpoint.json").read_text())
    assert meta["top_m"] is None and meta["kind"] == "rrs"
    record = json.loads((ckpt.parent / stages.STAGE_RECORD).read_text())
    assert record["structure"] == "mirror" and record["items"] == 6  # three train pairs, no test pair
    # another mask, structure or seed is another run
    other = stages.rrs_checkpoint(adapter, questions, P, 0, top_m=12.5, progress=False)
    assert other.parent != ckpt.parent and len(calls) == 2
    assert stages.rrs_run_dir(adapter, questions, P, 0, structure="basic") != ckpt.parent
    assert stages.rrs_run_dir(adapter, questions, P, 1) != ckpt.parent
    # other hyper-parameters are another run; the epoch count is not part of the key
    lr = dataclasses.replace(P, train=dataclasses.replace(FAST, lr=1e-4))
    assert stages.rrs_run_dir(adapter, questions, lr, 0) != ckpt.parent
    longer = dataclasses.replace(P, train=dataclasses.replace(FAST, epochs=5))
    assert stages.rrs_run_dir(adapter, questions, longer, 0) == ckpt.parent
    # ... unless the learning rate decays over the run (the paper profile): then each length is a run
    decaying = dataclasses.replace(P, train=dataclasses.replace(FAST, lr_schedule="linear"))
    runs = {e: stages.rrs_run_dir(adapter, questions, decaying, 0, epochs=e) for e in (1, 5)}
    assert runs[1] != runs[5] and ckpt.parent not in runs.values()
    assert runs[1] == stages.rrs_run_dir(adapter, questions, decaying, 0)  # None: the profile's epochs
    # a run without the per-epoch MSE is its own run: same weights, no epoch_mse.json, and a clear error
    quiet = stages.rrs_checkpoint(adapter, questions, P, 0, record_mse=False, progress=False)
    assert quiet.parent != ckpt.parent and len(calls) == 3 and calls[-1]["record_mse"] is False
    assert (quiet / "adapter_model.safetensors").read_bytes() == (ckpt / "adapter_model.safetensors").read_bytes()
    assert (ckpt.parent / "epoch_mse.json").is_file() and not (quiet.parent / "epoch_mse.json").exists()
    with pytest.raises(FileNotFoundError, match="record_mse=False"):
        stages.epoch_mse(quiet)


def test_more_epochs_resume_and_fewer_reuse(adapter, questions, P, monkeypatch):
    import rrs.training as T

    calls = count_calls(monkeypatch, T, "train_rrs")
    first = stages.rrs_checkpoint(adapter, questions, P, 0, progress=False)
    mtime = (first / "adapter_model.safetensors").stat().st_mtime_ns
    second = stages.rrs_checkpoint(adapter, questions, P, 0, epochs=2, progress=False)
    assert second.name == "epoch_2" and second.parent == first.parent
    assert [c["resume"] for c in calls] == [False, True]
    assert (first / "adapter_model.safetensors").stat().st_mtime_ns == mtime  # epoch 1 kept, not retrained
    assert stages.rrs_checkpoint(adapter, questions, P, 0, epochs=1, progress=False) == first
    assert len(calls) == 2
    assert list(stages.epoch_checkpoints(second)) == [1, 2]
    assert list(stages.epoch_checkpoints(first)) == [1]
    log = stages.training_log(second)
    assert {r["epoch"] for r in log} == {1, 2} and {"mse", "penalty"} <= set(log[0])
    assert {r["epoch"] for r in stages.training_log(first)} == {1}
    # the whole-training-set MSE: epoch 0 (vanilla) on, carried over the resume, cut at the epoch asked
    assert [r["epoch"] for r in stages.epoch_mse(second)] == [0, 1, 2]
    assert stages.epoch_mse(first) == stages.epoch_mse(second)[:2]
    (first.parent / "epoch_mse.json").unlink()
    with pytest.raises(FileNotFoundError, match="epoch_mse.json is missing"):
        stages.epoch_mse(first)


def test_interrupted_run_is_resumed(adapter, questions, P, monkeypatch):
    import rrs.training as T

    first = stages.rrs_checkpoint(adapter, questions, P, 0, progress=False)
    # an interrupted two-epoch run: epoch 2's folder half-written
    broken = first.parent / "epoch_2"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{}")
    calls = count_calls(monkeypatch, T, "train_rrs")
    done = stages.rrs_checkpoint(adapter, questions, P, 0, epochs=2, progress=False)
    assert done == broken and (done / "adapter_model.safetensors").is_file()
    assert calls[0]["resume"] is True


def test_a_run_cut_after_its_last_epoch_folder_keeps_that_epochs_log(adapter, questions, P, monkeypatch):
    import rrs.training as T

    save = T._save_epoch

    def save_then_die(*args, **kwargs):  # the process ends between the epoch folder and the state
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "_save_epoch", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        stages.rrs_checkpoint(adapter, questions, P, 0, progress=False)
    monkeypatch.setattr(T, "_save_epoch", save)
    done = stages.rrs_checkpoint(adapter, questions, P, 0, progress=False)  # complete: reused as it is
    assert [r["epoch"] for r in stages.epoch_mse(done)] == [0, 1]
    assert {r["epoch"] for r in stages.training_log(done)} == {1}
    # a damaged record is named, not a bare JSONDecodeError
    (done.parent / "epoch_mse.json").write_text('[{"epoch": 0, ')
    with pytest.raises(ValueError, match="epoch_mse.json: unreadable training record .*delete its run folder"):
        stages.epoch_mse(done)


def test_sft_checkpoints(adapter, questions, P, monkeypatch):
    import rrs.training as T

    calls = count_calls(monkeypatch, T, "train_sft")
    refusal = stages.sft_checkpoint(adapter, questions, P, 0, kind="refusal", progress=False)
    mixed = stages.sft_checkpoint(adapter, questions, P, 0, kind="mixed", progress=False)
    assert refusal.parent != mixed.parent and len(calls) == 2
    assert [c["kind"] for c in calls] == ["sft_refusal", "sft_mixed"]
    assert adapter.peft_model is None
    assert stages.sft_checkpoint(adapter, questions, P, 0, kind="refusal", progress=False) == refusal
    assert stages.sft_checkpoint(adapter, questions, P, 0, kind="mixed", progress=False) == mixed
    assert len(calls) == 2  # both cached: no retraining, no regeneration
    assert json.loads((refusal / "rrs_checkpoint.json").read_text())["train_config"]["lora_r"] == FAST.lora_r
    assert [r["epoch"] for r in stages.epoch_ce(mixed)] == list(range(FAST.epochs + 1))
    with pytest.raises(ValueError, match="unknown SFT kind"):
        stages.sft_checkpoint(adapter, questions, P, 0, kind="dpo")


def test_method_names_map_to_checkpoints(adapter, questions, P, monkeypatch):
    seen = []
    monkeypatch.setattr(stages, "rrs_checkpoint",
                        lambda *a, **kw: seen.append(("rrs", kw["top_m"], kw["structure"], kw["record_mse"])))
    monkeypatch.setattr(stages, "sft_checkpoint", lambda *a, **kw: seen.append(("sft", kw["kind"])))
    assert stages.method_checkpoint(adapter, questions, P, 0, "vanilla") is None
    for method in ["rrs", "sft_refusal", "sft_mixed", "rrs_top12.5", "rrs_top25", "rrs_top50", "rrs_basic",
                   "rrs_parallel", "rrs_mirror_half"]:
        stages.method_checkpoint(adapter, questions, P, 0, method)
    # only the main run records the per-epoch training-set MSE (notebooks 04 and 06 show it)
    assert seen == [("rrs", None, "mirror", True), ("sft", "refusal"), ("sft", "mixed"),
                    ("rrs", 12.5, "mirror", False), ("rrs", 25.0, "mirror", False), ("rrs", 50.0, "mirror", False),
                    ("rrs", None, "basic", False), ("rrs", None, "parallel", False),
                    ("rrs", None, "mirror_half", False)]
    assert set(stages.METHODS) == {"vanilla", "rrs", "sft_refusal", "sft_mixed", "rrs_top12.5", "rrs_top25",
                                   "rrs_top50", "rrs_basic", "rrs_parallel", "rrs_mirror_half"}


def test_unknown_method_is_a_clear_error(adapter, questions, P):
    with pytest.raises(ValueError, match=r"unknown method 'rrs_top10'.*rrs_top12\.5"):
        stages.method_checkpoint(adapter, questions, P, 0, "rrs_top10")


def test_load_method_and_representations(adapter, questions, P):
    test = stages.split_questions(questions, "test")
    assert stages.load_method(adapter, questions, P, 0, "vanilla") is None
    model = stages.load_method(adapter, questions, P, 0, "rrs", progress=False)
    assert adapter.peft_model is model and model.rrs_fingerprint.startswith("rrs-epoch1-")
    h = stages.representations(adapter, test, "audio-text", model=model, progress=False)
    h0 = stages.representations(adapter, test, "audio-text", progress=False)
    assert h.shape == (2, adapter.hidden_size) and not torch.allclose(h, h0)
    from rrs.representations import question_inputs

    inputs = question_inputs(test, "audio-text")
    torch.testing.assert_close(stages.refusal_token_probs(adapter, h, model),
                               adapter.first_token_probs(inputs, model=model), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(stages.refusal_token_probs(adapter, h0), adapter.first_token_probs(inputs),
                               atol=1e-6, rtol=1e-5)


def test_shift_tables_of_notebooks_03_and_04(adapter, questions, P):
    """±δ moves the "I" logit of every question by exactly w_I·δ (the LM head is linear), and
    the representation-shift table reads each mode's rows and centroid."""
    from rrs.representations import mean_distance

    train = stages.train_questions(questions)
    h = stages.representations(adapter, train, "audio-text", progress=False)
    masks = {"c>0": stages.safety_features(adapter, questions, P, 0, progress=False),
             "25": stages.safety_features(adapter, questions, P, 0, top_m=25, progress=False)}
    shift = stages.delta_shift_table(adapter, h, train.label, masks).set_index("mask")
    for name, f in masks.items():
        w_dot_delta = float(adapter.refusal_token_row() @ f.direction)
        assert shift.loc[name, "logit_up_min"] == pytest.approx(w_dot_delta, rel=1e-4)
        assert shift.loc[name, "logit_down_max"] == pytest.approx(-w_dot_delta, rel=1e-4)
        assert shift.loc[name, "p_I_harmful+δ"] > shift.loc[name, "p_I_harmful"]

    labels = train.label.to_numpy()
    h_other = {mode: h * (1 + i) for i, mode in enumerate(("audio-text", "text-only"))}
    centroids = {mode: torch.zeros(adapter.hidden_size) for mode in h_other}
    table = stages.representation_shift(adapter, {m: h for m in h_other}, h_other, centroids, labels, None)
    assert list(table["mode"]) == ["audio-text", "audio-text", "text-only", "text-only"]
    assert list(table.n) == [int((labels == "harmful").sum()), int((labels == "benign").sum())] * 2
    same = table[table["mode"] == "audio-text"]
    assert (same.p_I_vanilla == same.p_I_rrs).all() and (same.dist_vanilla == same.dist_rrs).all()
    benign_text = table[(table["mode"] == "text-only") & (table.label == "benign")].iloc[0]
    assert benign_text.dist_rrs == pytest.approx(2 * mean_distance(h[labels == "benign"], torch.zeros(1)))


def test_training_items_and_splits(questions):
    items = stages.training_items(questions, "parallel", seed=0)
    assert set(items["split"]) == {"train"} and items.groupby("modality").size().to_dict() == {"audio": 6, "text": 6}
    assert len(stages.split_questions(questions, "test", "harmful")) == 1
    with pytest.raises(ValueError, match="no questions with split='advbench'"):
        stages.split_questions(questions, "advbench")
    with pytest.raises(ValueError, match="no training questions"):
        stages.train_questions(questions.assign(split="test"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_setup_without_gpu_says_what_to_do():
    with pytest.raises(RuntimeError, match="device='cpu'"):
        stages.setup("paper", 0, model="unused")


def test_setup_passes_revision_and_the_remote_code_opt_in_to_the_loader(monkeypatch):
    """Qwen-Audio-Chat loads only with trust_remote_code=True and a revision: the notebooks
    pass both through setup (run_all.sh --trust-remote-code --revision SHA)."""
    import rrs.models as models

    seen = {}

    def fake_load(model, **kwargs):
        seen.update(kwargs, model=model)
        raise RuntimeError("stop here")

    monkeypatch.setattr(stages.data, "prepare_dataset", lambda P, seed, progress: None)
    monkeypatch.setattr(models, "load_adapter", fake_load)
    with pytest.raises(RuntimeError, match="stop here"):
        stages.setup("ci", 0)
    assert (seen["revision"], seen["trust_remote_code"]) == (None, False)
    with pytest.raises(RuntimeError, match="stop here"):
        stages.setup("ci", 0, model="Qwen/Qwen-Audio-Chat", revision="a" * 40, trust_remote_code=True)
    assert seen == {"model": "Qwen/Qwen-Audio-Chat", "device": "cpu", "dtype": "float32", "revision": "a" * 40,
                    "trust_remote_code": True}


def test_setup_stops_before_any_speech_on_a_model_it_cannot_use(monkeypatch, tmp_path):
    import shutil

    from rrs.mini import MODEL_DIR, MiniModelError
    from rrs.models.base import mini_folder

    def no_speech(*args, **kwargs):
        raise AssertionError("the questions were spoken before the model was checked")

    monkeypatch.setattr(stages.data, "prepare_dataset", no_speech)
    with pytest.raises(ValueError, match="unknown model 'no/such-model'"):
        stages.setup("ci", 0, model="no/such-model")
    # the committed build's corpus leaves out seed 0's test split only
    with pytest.raises(MiniModelError, match=r"built for split seed 0, not seed=1.*--seed 1"):
        stages.setup("ci", 1)
    other = shutil.copytree(MODEL_DIR, tmp_path / "build")
    record = json.loads((other / "build_record.json").read_text())
    record["config"]["split_seed"] = 1
    (other / "build_record.json").write_text(json.dumps(record))
    with pytest.raises(MiniModelError, match="built for split seed 1, not seed=0"):
        stages.setup("ci", 0, model=str(other))
    assert mini_folder("mini-lalm") == MODEL_DIR and mini_folder(str(other)) == other.resolve()
    assert mini_folder("Qwen/Qwen2-Audio-7B-Instruct") is None


def test_provenance_records_how_the_model_ran(adapter, P):
    record = stages.provenance(dataclasses.replace(P, max_train_pairs=7), adapter, 0, notebook="04", epochs=3)
    assert record["run"] == {"dtype": "float32", "device": "cpu", "revision": None, "max_train_pairs": 7,
                             "max_test_pairs": P.max_test_pairs, "max_eval_questions": P.max_eval_questions,
                             "train_epochs": 1}
    assert (record["model"], record["seed"], record["notebook"], record["epochs"]) == (adapter.model_id, 0, "04", 3)
    assert record["profile"] == "mini" and record["data_checksum"] and record["git_commit"]
    assert stages.provenance(P, adapter, 0, notebook="05", model="my-model")["model"] == "my-model"


def test_check_tolerance_is_exact_in_float32_and_a_rounding_step_in_half_precision():
    from types import SimpleNamespace

    assert stages.check_tolerance(SimpleNamespace(dtype=torch.float32), 1e-5, 1e-4) == {"atol": 1e-5, "rtol": 1e-4}
    for dtype in (torch.bfloat16, torch.float16):
        assert stages.check_tolerance(SimpleNamespace(dtype=dtype), 1e-5, 1e-4) == {"atol": 3e-2, "rtol": 3e-2}
        assert stages.check_tolerance(SimpleNamespace(dtype=dtype), 0.1, 1e-4) == {"atol": 0.1, "rtol": 3e-2}
