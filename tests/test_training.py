"""RRS and SFT training on a tiny Qwen2-Audio: formulas, short runs, resume, refusals."""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from rrs.features import SafetyFeatures
from rrs.modes import H0_PROMPT, TRAINING_PROMPTS
from rrs.profiles import TrainConfig
from rrs.training import (REFUSAL_TEMPLATES, CheckpointMismatchError, attach_lora, batch_prompts, compute_targets,
                          detach_lora, learning_rate, load_trained, lora_config, lora_penalty, mixed_sft_data,
                          refusal_sft_data, rrs_loss, sft_loss, train_rrs, train_sft, training_examples)

# Full-batch steps on the 8 tiny items: the loss curve is deterministic, not batch noise.
FAST = TrainConfig(lora_r=4, lora_alpha=8, lora_dropout=0.0, epochs=2, lr=1e-3, batch_size=8, grad_accum=1)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """RRS targets and features go through the representation cache: keep it per test."""
    monkeypatch.setenv("RRS_CACHE_DIR", str(tmp_path / "rrs-cache"))


def features_for(adapter, items, top_m=None):
    from rrs.representations import safety_features

    return safety_features(adapter, items, top_m=top_m, progress=False)


def lora_weights(peft_model) -> dict:
    return {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" in n}


def test_lora_penalty_by_hand():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(nn.Sequential(nn.Linear(4, 3)), LoraConfig(r=2, lora_alpha=4, target_modules=["0"]))
    layer = model.base_model.model[0]
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(torch.ones(2, 4))
        layer.lora_B["default"].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    # B·A has rows [1,1,1,1], [1,1,1,1], [2,2,2,2]: ||BA||² = 4 + 4 + 16 = 24; s = 4/2 = 2 -> 4·24
    torch.testing.assert_close(lora_penalty(model), torch.tensor(96.0))
    penalty = lora_penalty(model)
    penalty.backward()
    assert layer.lora_B["default"].weight.grad is not None  # differentiable


def test_rrs_loss():
    loss, mse, pen = rrs_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor(3.0), 0.5)
    torch.testing.assert_close(mse, torch.tensor(2.5))       # (1 + 4) / 2
    torch.testing.assert_close(loss, torch.tensor(4.0))      # 2.5 + 0.5 * 3
    torch.testing.assert_close(pen, torch.tensor(3.0))


def test_lora_config_from_profile():
    from rrs.profiles import PAPER

    cfg = lora_config(PAPER.train, "x")
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules) == (16, 4, 0.1, "x")


def test_training_examples(tiny_items):
    ex = training_examples(tiny_items, modes=("audio-text", "text-only"), seed=3)
    assert len(ex) == 16 and [e.mode for e in ex[:2]] == ["audio-text", "text-only"]
    at = [e for e in ex if e.mode == "audio-text"]
    assert all(e.h0_input.text == H0_PROMPT and e.train_input.text in TRAINING_PROMPTS for e in at)
    assert all(e.train_input.audio is e.h0_input.audio for e in at)   # the same audio
    assert [e.train_input.text for e in ex] == [e.train_input.text for e in training_examples(
        tiny_items, modes=("audio-text", "text-only"), seed=3)]        # seeded
    assert len({e.train_input.text for e in at}) > 1                    # drawn, not fixed
    text_rows = tiny_items.assign(modality=["text", "audio"] * 4)       # Parallel's written copy
    assert [e.mode for e in training_examples(text_rows)][:2] == ["text-only", "audio-text"]
    with pytest.raises(ValueError, match="labels must be"):
        training_examples(tiny_items.assign(label="unsafe"))


def test_targets_come_from_the_frozen_model(tiny_qwen2_audio_adapter, tiny_items):
    adapter = tiny_qwen2_audio_adapter
    ex = training_examples(tiny_items)
    harmful = [e.h0_input for e in ex if e.label == "harmful"]
    benign = [e.h0_input for e in ex if e.label == "benign"]
    h_h = adapter.hidden_states(harmful, progress=False)
    h_b = adapter.hidden_states(benign, progress=False)
    delta = torch.randn(adapter.hidden_size)
    peft_model = attach_lora(adapter, lora_config(FAST, adapter.lora_target_pattern), seed=0)
    with torch.no_grad():  # make the LoRA adapter change the outputs
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    assert not torch.allclose(adapter.hidden_states(harmful, progress=False, model=peft_model), h_h, atol=1e-4)
    t_h, t_b = compute_targets(adapter, harmful, benign, delta)
    torch.testing.assert_close(t_h, h_h + delta, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(t_b, h_b - delta, atol=1e-5, rtol=1e-5)
    detach_lora(adapter)
    torch.testing.assert_close(adapter.hidden_states(harmful, progress=False), h_h)


def test_rrs_run_reduces_mse_and_writes_checkpoints(tiny_qwen2_audio_adapter, tiny_items, tmp_path, tmp_rrs_cache):
    adapter = tiny_qwen2_audio_adapter
    feats = features_for(adapter, tiny_items)
    inputs = [e.train_input for e in training_examples(tiny_items)]
    vanilla = adapter.hidden_states(inputs, progress=False)
    result = train_rrs(adapter, tiny_items, feats, replace(FAST, epochs=3), tmp_path / "rrs",
                       seed=0, progress=False)
    log = result.log
    assert len(log) == 3 and {"mse", "penalty", "loss", "epoch", "step"} <= set(log[0])
    mse = [r["mse"] for r in log]
    assert mse[2] < mse[1] < mse[0] and mse[2] < 0.9 * mse[0], mse
    assert log[0]["penalty"] == 0.0 and log[-1]["penalty"] > 0   # B starts at zero
    assert [p.name for p in result.checkpoints] == ["epoch_1", "epoch_2", "epoch_3"]
    meta = json.loads((tmp_path / "rrs" / "epoch_3" / "rrs_checkpoint.json").read_text())
    assert meta["model_id"] == adapter.model_id and meta["top_m"] is None
    assert meta["direction_hash"] == feats.direction_hash and meta["epoch"] == 3
    assert json.loads((tmp_path / "rrs" / "loss_log.json").read_text()) == json.loads(json.dumps(log))
    assert not [p for p in (tmp_path / "rrs").iterdir() if p.name.startswith(".")]  # no temp leftovers
    # the trained model's representations moved; loading a checkpoint reproduces them
    trained = adapter.hidden_states(inputs, progress=False, model=result.peft_model)
    assert not torch.allclose(trained, vanilla, atol=1e-3)
    # the whole-training-set MSE, recomputed here from the targets: vanilla (epoch 0) and epoch 3
    examples = training_examples(tiny_items)
    harmful = torch.tensor([e.label == "harmful" for e in examples])
    t_h, t_b = compute_targets(adapter, [e.h0_input for e in examples if e.label == "harmful"],
                               [e.h0_input for e in examples if e.label == "benign"], feats.direction, progress=False)
    targets = torch.empty_like(vanilla)
    targets[harmful], targets[~harmful] = t_h, t_b
    rows = json.loads((tmp_path / "rrs" / "epoch_mse.json").read_text())
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    for row, h in ((rows[0], vanilla), (rows[3], trained)):
        d = ((h - targets) ** 2).mean(1)
        assert row["mse"] == pytest.approx(d.mean().item(), rel=1e-5)
        assert row["mse_harmful"] == pytest.approx(d[harmful].mean().item(), rel=1e-5)
        assert row["mse_benign"] == pytest.approx(d[~harmful].mean().item(), rel=1e-5)
    assert rows[0]["mse"] == pytest.approx(mse[0], rel=1e-5)  # one batch holds every example: step 1 saw vanilla
    assert rows[3]["mse"] < rows[0]["mse"]
    # model=None stays the vanilla model while the trained LoRA is attached
    torch.testing.assert_close(adapter.hidden_states(inputs, progress=False), vanilla)
    model = load_trained(adapter, tmp_path / "rrs" / "epoch_3", features=feats)
    assert model.rrs_fingerprint.startswith("rrs-epoch3-")
    torch.testing.assert_close(adapter.hidden_states(inputs, progress=False, model=model), trained)
    detach_lora(adapter)
    torch.testing.assert_close(adapter.hidden_states(inputs, progress=False), vanilla)


def fresh_tiny_qwen2_audio():
    """A tiny Qwen2-Audio adapter with the same weights at every call."""
    from rrs.models.qwen2_audio import Qwen2AudioAdapter, random_tiny_qwen2_audio

    return Qwen2AudioAdapter(*random_tiny_qwen2_audio(seed=0), model_id="tiny-qwen2-audio")


def interrupted_then_resumed(adapter, items, feats, cfg, out_dir):
    """RRS training stopped after epoch 1 (as by Ctrl-C), then resumed: the resumed result."""
    def stop_after_first(epoch):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_rrs(adapter, items, feats, cfg, out_dir, seed=1, progress=False, on_epoch_end=stop_after_first)
    assert (out_dir / "epoch_1").is_dir() and not (out_dir / "epoch_2").exists()
    return train_rrs(adapter, items, feats, cfg, out_dir, seed=1, progress=False, resume=True)


def test_resume_after_interruption_gives_the_same_weights(tiny_items, tmp_path, tmp_rrs_cache):
    cfg = TrainConfig(lora_r=4, lora_alpha=8, lora_dropout=0.1, epochs=2, lr=1e-2, batch_size=3, grad_accum=2)
    a = fresh_tiny_qwen2_audio()
    feats = features_for(a, tiny_items)
    full = lora_weights(train_rrs(a, tiny_items, feats, cfg, tmp_path / "full", seed=1, progress=False).peft_model)

    b = fresh_tiny_qwen2_audio()
    resumed = interrupted_then_resumed(b, tiny_items, feats, cfg, tmp_path / "cut")
    assert [r["epoch"] for r in resumed.log] == [1, 1, 2, 2]
    mse_rows = json.loads((tmp_path / "cut" / "epoch_mse.json").read_text())
    assert [r["epoch"] for r in mse_rows] == [0, 1, 2]
    assert mse_rows == json.loads((tmp_path / "full" / "epoch_mse.json").read_text())
    got = lora_weights(resumed.peft_model)
    assert got.keys() == full.keys()
    for name in full:
        torch.testing.assert_close(got[name], full[name], atol=0, rtol=0)
    # resuming with another mask is refused
    other = features_for(b, tiny_items, top_m=25.0)
    with pytest.raises(CheckpointMismatchError, match="safety mask"):
        train_rrs(b, tiny_items, other, replace(cfg, epochs=3), tmp_path / "cut", seed=1,
                  progress=False, resume=True)
    with pytest.raises(CheckpointMismatchError, match="safety mask"):
        load_trained(b, tmp_path / "cut" / "epoch_2", features=other)


def test_learning_rate_schedules():
    assert learning_rate(FAST, 7, 10) == FAST.lr
    linear = replace(FAST, lr_schedule="linear")
    assert [learning_rate(linear, step, 4) for step in range(4)] == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])
    with pytest.raises(ValueError, match="unknown lr_schedule 'cosine'"):  # refused by TrainConfig itself
        learning_rate(replace(FAST, lr_schedule="cosine"), 0, 1)
    with pytest.raises(ValueError, match="unknown prompt_sampling 'per_step'"):
        replace(FAST, prompt_sampling="per_step")


def test_batch_prompts_are_drawn_as_the_authors_collator_draws_them():
    first = batch_prompts(4, TRAINING_PROMPTS, seed=0, epoch=1, first=5)
    assert len(set(first)) == 4 and set(first) <= set(TRAINING_PROMPTS)      # all different in a batch
    assert batch_prompts(4, TRAINING_PROMPTS, seed=0, epoch=1, first=5) == first   # a resumed run draws the same
    later = [batch_prompts(4, TRAINING_PROMPTS, seed=0, epoch=e, first=5) for e in range(2, 6)]
    assert any(p != first for p in later)                                    # another epoch, another draw
    assert len(set(batch_prompts(12, TRAINING_PROMPTS, seed=0, epoch=1, first=0))) == 10


@pytest.mark.parametrize("prompt_sampling", ["per_example", "per_batch"])
def test_paper_settings_resume_exactly_and_bind_the_run_length(tiny_items, tmp_path, tmp_rrs_cache, prompt_sampling):
    """The paper profile's loop: a learning rate decaying to 0 and, per_batch, prompts drawn anew for every batch."""
    cfg = TrainConfig(lora_r=4, lora_alpha=8, lora_dropout=0.1, epochs=2, lr=1e-2, batch_size=3, grad_accum=2,
                      lr_schedule="linear", prompt_sampling=prompt_sampling)
    a = fresh_tiny_qwen2_audio()
    feats = features_for(a, tiny_items)
    full = train_rrs(a, tiny_items, feats, cfg, tmp_path / "full", seed=1, progress=False)
    # 8 items in batches of 3, two batches a step: 2 steps an epoch, 4 in all, the rate falling to 0
    assert [r["lr"] for r in full.log] == pytest.approx([1e-2, 7.5e-3, 5e-3, 2.5e-3])
    full_weights = lora_weights(full.peft_model)
    for field, value in (("lr_schedule", "constant"), ("prompt_sampling", "per_example")):
        if getattr(cfg, field) != value:  # the rates reach AdamW; the drawn prompts reach the model
            other = lora_weights(train_rrs(fresh_tiny_qwen2_audio(), tiny_items, feats, replace(cfg, **{field: value}),
                                           tmp_path / field, seed=1, progress=False).peft_model)
            assert any(not torch.equal(other[name], w) for name, w in full_weights.items()), field

    b = fresh_tiny_qwen2_audio()
    resumed = interrupted_then_resumed(b, tiny_items, feats, cfg, tmp_path / "cut")
    assert resumed.log == full.log
    for name, weight in lora_weights(resumed.peft_model).items():
        torch.testing.assert_close(weight, full_weights[name], atol=0, rtol=0)
    # every step's rate depends on the run's length: a 2-epoch run is not continued to 3
    with pytest.raises(CheckpointMismatchError, match="schedule_epochs=2, expected 3"):
        train_rrs(b, tiny_items, feats, replace(cfg, epochs=3), tmp_path / "cut", seed=1, progress=False, resume=True)


def test_skipping_the_mse_record_leaves_the_training_unchanged(tiny_items, tmp_path, tmp_rrs_cache):
    from rrs.models.qwen2_audio import Qwen2AudioAdapter, random_tiny_qwen2_audio

    # dropout on, so that a stray random draw in the record would show in the weights
    cfg = TrainConfig(lora_r=4, lora_alpha=8, lora_dropout=0.1, epochs=2, lr=1e-2, batch_size=3, grad_accum=1)
    runs = {}
    for record in (True, False):
        adapter = Qwen2AudioAdapter(*random_tiny_qwen2_audio(seed=0), model_id="tiny-qwen2-audio")
        feats = features_for(adapter, tiny_items)
        result = train_rrs(adapter, tiny_items, feats, cfg, tmp_path / str(record), seed=1, progress=False,
                           record_mse=record)
        runs[record] = (lora_weights(result.peft_model), result.log)
    assert runs[True][1] == runs[False][1]
    for name, weight in runs[True][0].items():
        torch.testing.assert_close(runs[False][0][name], weight, atol=0, rtol=0)
    assert (tmp_path / "True" / "epoch_mse.json").is_file() and not (tmp_path / "False" / "epoch_mse.json").exists()
    meta = json.loads((tmp_path / "False" / "epoch_2" / "rrs_checkpoint.json").read_text())
    assert meta["record_mse"] is False
    assert "record_mse" not in json.loads((tmp_path / "True" / "epoch_2" / "rrs_checkpoint.json").read_text())
    # a run without records is not continued as one with them (its epoch_mse.json would lack epochs)
    with pytest.raises(CheckpointMismatchError, match="record_mse"):
        train_rrs(adapter, tiny_items, feats, replace(cfg, epochs=3), tmp_path / "False", seed=1, progress=False,
                  resume=True)


def test_checkpoint_of_another_model_is_refused(tiny_qwen2_audio_adapter, tiny_omni_adapter, tiny_items, tmp_path,
                                                tmp_rrs_cache):
    from rrs.models.qwen2_audio import Qwen2AudioAdapter, random_tiny_qwen2_audio

    adapter = tiny_qwen2_audio_adapter
    feats = features_for(adapter, tiny_items)
    train_rrs(adapter, tiny_items, feats, replace(FAST, epochs=1), tmp_path / "ck",
              progress=False)
    other = Qwen2AudioAdapter(*random_tiny_qwen2_audio(seed=1), model_id="tiny-qwen2-audio")  # same id, other weights
    with pytest.raises(CheckpointMismatchError, match="not on these weights"):
        load_trained(other, tmp_path / "ck" / "epoch_1")
    with pytest.raises(CheckpointMismatchError, match="another model"):
        train_rrs(other, tiny_items, feats, FAST, tmp_path / "ck", progress=False, resume=True)
    with pytest.raises(ValueError, match="computed for 'tiny-qwen2-audio', not 'tiny-omni'"):
        train_rrs(tiny_omni_adapter, tiny_items, feats, FAST, tmp_path / "omni", progress=False)


def test_a_damaged_checkpoint_is_named_not_loaded(tiny_qwen2_audio_adapter, tiny_items, tmp_path, tmp_rrs_cache):
    import shutil

    from rrs.training import CheckpointError

    adapter = tiny_qwen2_audio_adapter
    train_rrs(adapter, tiny_items, features_for(adapter, tiny_items), replace(FAST, epochs=1), tmp_path / "ck",
              progress=False)
    good = tmp_path / "ck" / "epoch_1"
    meta = json.loads((good / "rrs_checkpoint.json").read_text())
    weights = good / "adapter_model.safetensors"
    assert meta["adapter_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    # resuming a run never continues from damaged weights (checked before load_trained touches the adapter)
    shutil.copytree(tmp_path / "ck", tmp_path / "resume")
    resumed = tmp_path / "resume" / "epoch_1" / "adapter_model.safetensors"
    resumed.write_bytes(resumed.read_bytes()[:-1] + b" ")
    with pytest.raises(CheckpointError, match=r"resume/epoch_1/adapter_model\.safetensors fails its checksum"):
        train_rrs(adapter, tiny_items, features_for(adapter, tiny_items), replace(FAST, epochs=2), tmp_path / "resume",
                  progress=False, resume=True)
    fingerprint = load_trained(adapter, good).rrs_fingerprint
    assert fingerprint.startswith("rrs-epoch1-")
    # adapter_config.json changes the model as much as the weights: an edit is refused, and
    # where no checksum was recorded (older records) it still gives another fingerprint
    edited = shutil.copytree(good, tmp_path / "edited")
    config = json.loads((edited / "adapter_config.json").read_text())
    (edited / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 4 * config["lora_alpha"]}))
    with pytest.raises(CheckpointError, match=r"edited/adapter_config\.json was changed after training"):
        load_trained(adapter, edited)
    record = json.loads((edited / "rrs_checkpoint.json").read_text())
    del record["adapter_config_sha256"]
    (edited / "rrs_checkpoint.json").write_text(json.dumps(record))
    assert load_trained(adapter, edited).rrs_fingerprint not in ("", fingerprint)

    gone = shutil.copytree(good, tmp_path / "gone")
    (gone / "adapter_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"gone is an incomplete checkpoint \(missing \['adapter_model"):
        load_trained(adapter, gone)
    cut = shutil.copytree(good, tmp_path / "cut")
    (cut / "adapter_model.safetensors").write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"cut/adapter_model\.safetensors fails its checksum"):
        load_trained(adapter, cut)
    # a record without the checksum (made before it was recorded): the loader itself names the damage
    legacy = json.loads((cut / "rrs_checkpoint.json").read_text())
    del legacy["adapter_sha256"]
    (cut / "rrs_checkpoint.json").write_text(json.dumps(legacy))
    with pytest.raises(CheckpointError, match=r"cut: the adapter cannot be loaded \(SafetensorError"):
        load_trained(adapter, cut)
    garbled = shutil.copytree(good, tmp_path / "garbled")
    (garbled / "rrs_checkpoint.json").write_text("{oops")
    with pytest.raises(CheckpointError, match=r"garbled/rrs_checkpoint\.json: unreadable checkpoint record"):
        load_trained(adapter, garbled)
    (garbled / "rrs_checkpoint.json").write_text("[]")
    with pytest.raises(CheckpointError, match=r"not an rrs checkpoint record \(lacks \['kind'"):
        load_trained(adapter, garbled)


def test_refusal_sft_reduces_cross_entropy(tiny_qwen2_audio_adapter, tiny_items, tmp_path):
    items, responses = refusal_sft_data(tiny_items)
    assert len(items) == 4 and set(responses) == {REFUSAL_TEMPLATES[0]}
    result = train_sft(tiny_qwen2_audio_adapter, items, responses, replace(FAST, epochs=4, lr=1e-2),
                       tmp_path / "sft", kind="sft-refusal", progress=False)
    ce = [r["ce"] for r in result.log]
    assert len(ce) == 4 and all(b < a for a, b in zip(ce, ce[1:])) and ce[-1] < ce[0] - 0.1, ce
    meta = json.loads((tmp_path / "sft" / "epoch_4" / "rrs_checkpoint.json").read_text())
    assert meta["kind"] == "sft-refusal" and meta["direction_hash"] is None
    # the whole-training-set cross-entropy: one full batch and no dropout, so step e + 1 saw the
    # model of epoch e (epoch 0: vanilla); the trained model's is recomputed here
    rows = json.loads((tmp_path / "sft" / "epoch_ce.json").read_text())
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["ce"] for r in rows[:4]] == pytest.approx(ce, rel=1e-5)
    examples = training_examples(items)
    batch = tiny_qwen2_audio_adapter.sft_batch([e.train_input for e in examples], [responses[e.row] for e in examples])
    with torch.no_grad():
        trained = sft_loss(tiny_qwen2_audio_adapter, batch, result.peft_model).item()
    assert rows[4]["ce"] == pytest.approx(trained, rel=1e-5) and rows[4]["ce"] < ce[-1]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_models_train_as_in_float32(dtype, tiny_items, tmp_path):
    """The paper profile runs its models in bfloat16, the colab one in float16. peft keeps the
    LoRA weights in float32, so small steps accumulate instead of rounding away, and both
    losses over the whole training set fall as they do in float32."""
    from rrs.models.qwen2_audio import Qwen2AudioAdapter, random_tiny_qwen2_audio

    cfg = replace(FAST, epochs=3)
    runs = {}
    for name in ("float32", dtype):
        model, processor = random_tiny_qwen2_audio(seed=0)
        adapter = Qwen2AudioAdapter(model.to(getattr(torch, name)), processor, model_id="tiny-qwen2-audio")
        rrs = train_rrs(adapter, tiny_items, features_for(adapter, tiny_items), cfg, tmp_path / name / "rrs",
                        progress=False)
        assert {p.dtype for n, p in rrs.peft_model.named_parameters() if "lora_" in n} == {torch.float32}
        detach_lora(adapter)
        items, responses = refusal_sft_data(tiny_items)
        train_sft(adapter, items, responses, cfg, tmp_path / name / "sft", progress=False)
        runs[name] = [[r[key] for r in json.loads((tmp_path / name / file).read_text())]
                      for file, key in (("rrs/epoch_mse.json", "mse"), ("sft/epoch_ce.json", "ce"))]
    for mse, ce in runs.values():
        assert mse[-1] < 0.9 * mse[0] and all(b < a for a, b in zip(ce, ce[1:])), (mse, ce)
    (mse32, ce32), (mse, ce) = runs["float32"], runs[dtype]
    assert mse[-1] == pytest.approx(mse32[-1], rel=0.03) and ce[-1] == pytest.approx(ce32[-1], rel=1e-3)


def test_mixed_sft_data_uses_the_vanilla_answers(tiny_qwen2_audio_adapter, tiny_items):
    adapter = tiny_qwen2_audio_adapter
    items, responses, ends_turn = mixed_sft_data(adapter, tiny_items, max_new_tokens=3, progress=False)
    benign = [e for e in training_examples(tiny_items) if e.label == "benign"]
    want, ended = adapter.generate_with_ends([e.train_input for e in benign], max_new_tokens=3, progress=False)
    assert [r for r, lab in zip(responses, items.label) if lab == "benign"] == want
    assert [e for e, lab in zip(ends_turn, items.label) if lab == "benign"] == ended
    assert all(r == REFUSAL_TEMPLATES[0] and e for r, e, lab in zip(responses, ends_turn, items.label)
               if lab == "harmful")


def test_answers_cut_at_the_limit_are_trained_without_an_end_of_turn(tiny_qwen2_audio_adapter, tiny_items,
                                                                     tmp_path, monkeypatch):
    """An answer cut at max_new_tokens (it goes on when allowed more) is flagged, and SFT on
    it must not teach the model to stop where the cut was."""
    adapter = tiny_qwen2_audio_adapter
    items, responses, ends_turn = mixed_sft_data(adapter, tiny_items, max_new_tokens=3, progress=False)
    benign = [i for i, lab in enumerate(items.label) if lab == "benign"]
    first = {e.row: e for e in reversed(training_examples(tiny_items))}
    longer = adapter.generate([first[i].train_input for i in benign], max_new_tokens=12, progress=False)
    assert [ends_turn[i] for i in benign] == [a == responses[i] for a, i in zip(longer, benign)]
    assert not all(ends_turn[i] for i in benign)  # the tiny random model is cut at 3 tokens at least once
    eot = adapter.tokenizer.convert_tokens_to_ids(adapter.end_of_turn)
    examples = training_examples(items)
    batch = adapter.sft_batch([e.train_input for e in examples], [responses[e.row] for e in examples],
                              [ends_turn[e.row] for e in examples])
    for row, e in enumerate(examples):
        labelled = batch["labels"][row][batch["labels"][row] != -100].tolist()
        want = adapter.tokenizer.encode(responses[e.row] + (adapter.end_of_turn if ends_turn[e.row] else ""),
                                        add_special_tokens=False)
        assert labelled == want and (labelled[-1] == eot) == ends_turn[e.row]
    # the flags reach training's batches, each with its own row's response
    seen = {}
    make_batch = adapter.sft_batch

    def recording_sft_batch(inputs, answers, flags=None):
        seen.update(zip(answers, flags))
        return make_batch(inputs, answers, flags)

    monkeypatch.setattr(adapter, "sft_batch", recording_sft_batch)
    train_sft(adapter, items, responses, replace(FAST, epochs=1), tmp_path / "sft", ends_turn=ends_turn, progress=False)
    assert seen == dict(zip(responses, ends_turn))


def test_non_finite_gradient_stops_before_a_checkpoint(tiny_qwen2_audio_adapter, tiny_items, tmp_path,
                                                       tmp_rrs_cache, monkeypatch):
    import rrs.training as training

    feats = features_for(tiny_qwen2_audio_adapter, tiny_items)
    penalty = training.lora_penalty
    monkeypatch.setattr(training, "lora_penalty", lambda model: penalty(model) * float("nan"))  # NaN gradients
    with pytest.raises(FloatingPointError, match="non-finite gradient at epoch 1, step 1"):
        train_rrs(tiny_qwen2_audio_adapter, tiny_items, feats, FAST, tmp_path / "nan", progress=False)
    assert not list((tmp_path / "nan").glob("epoch_*"))


def test_refusal_templates_start_with_I():
    assert all(t.startswith("I") for t in REFUSAL_TEMPLATES) and len(set(REFUSAL_TEMPLATES)) == len(REFUSAL_TEMPLATES)


def test_features_of_another_size_are_refused(tiny_qwen2_audio_adapter, tiny_items, tmp_path):
    feats = SafetyFeatures.compute(torch.ones(1, 5), torch.zeros(1, 5), torch.ones(5), model_id="tiny-qwen2-audio")
    with pytest.raises(ValueError, match="hidden size 5"):
        train_rrs(tiny_qwen2_audio_adapter, tiny_items, feats, FAST, tmp_path, progress=False)


def test_decoder_inputs_are_read_once_per_set_of_examples(tiny_qwen2_audio_adapter, tiny_items):
    from rrs.training import cached_decoder_inputs

    adapter, calls = tiny_qwen2_audio_adapter, []
    examples = training_examples(tiny_items)

    def batch(idx):
        calls.append(idx)
        return adapter.prepare([examples[i].train_input for i in idx])

    first = cached_decoder_inputs(adapter, batch, len(examples), 3, progress=False, key="a")
    assert len(first) == len(examples) and calls == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert cached_decoder_inputs(adapter, batch, len(examples), 3, progress=False, key="a") is first
    assert len(calls) == 3  # same key: nothing read again
    other = cached_decoder_inputs(adapter, batch, len(examples), 4, progress=False, key="b")
    assert len(calls) == 5 and other is not first
    for a, b in zip(first, other):
        torch.testing.assert_close(a["inputs_embeds"], b["inputs_embeds"], atol=1e-5, rtol=1e-4)


def test_damaged_or_one_sided_inputs_are_named(tiny_items, tmp_path, tmp_rrs_cache):
    a = fresh_tiny_qwen2_audio()
    feats = features_for(a, tiny_items)
    with pytest.raises(ValueError, match="RRS needs harmful and benign training items; none is harmful"):
        train_rrs(a, tiny_items[tiny_items.label == "benign"], feats, FAST, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    # a file that is not a safety-features record
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="foreign.pt is not a safety-features file"):
        SafetyFeatures.load(foreign)
    feats.save(tmp_path / "ok.pt")
    assert SafetyFeatures.load(tmp_path / "ok.pt", model_id=a.model_id).direction_hash == feats.direction_hash
