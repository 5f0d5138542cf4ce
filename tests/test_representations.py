"""Representation cache, safety features from a model, and the probes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rrs.features import contributions, mean_difference, safety_mask
from rrs.modes import H0_PROMPT, build_input
from rrs.representations import (cache_path, extract, linear_probe_accuracy, mean_distance, safety_features,
                                 tsne_2d)


def inputs_of(items, **kw):
    return [build_input(r.text, r.audio, "audio-text", prompt=H0_PROMPT, **kw) for r in items.itertuples()]


def test_extract_caches_and_keys(tiny_qwen2_audio_adapter, tiny_items, tmp_rrs_cache, monkeypatch):
    adapter = tiny_qwen2_audio_adapter
    inputs = inputs_of(tiny_items)
    parts = {"ids": list(tiny_items.id), "mode": "audio-text", "prompt": H0_PROMPT, "refusal": False}
    h = extract(adapter, inputs, cache_key_parts=parts, progress=False)
    assert h.shape == (8, adapter.hidden_size) and h.dtype == torch.float32
    path = cache_path(adapter, inputs, parts)
    assert path.is_file() and path.parent == tmp_rrs_cache / "representations"
    torch.testing.assert_close(h, adapter.hidden_states(inputs, progress=False))

    def no_model(*a, **k):
        raise AssertionError("the model ran although the representations are cached")

    monkeypatch.setattr(adapter, "hidden_states", no_model)
    torch.testing.assert_close(extract(adapter, inputs, cache_key_parts=parts, progress=False), h)
    # another prompt/refusal flag, other inputs or other weights: another key
    assert cache_path(adapter, inputs, {**parts, "refusal": True}) != path
    assert cache_path(adapter, inputs_of(tiny_items, refusal=True), parts) != path
    with torch.no_grad():
        adapter.model.lm_head.weight.mul_(2)
    assert cache_path(adapter, inputs, parts) != path


def test_cached_tensor_of_another_hidden_size_is_an_error(tiny_qwen2_audio_adapter, tiny_items, tmp_rrs_cache):
    inputs = inputs_of(tiny_items)
    path = cache_path(tiny_qwen2_audio_adapter, inputs, {"k": 1})
    path.parent.mkdir(parents=True)
    torch.save(torch.zeros(8, 7), path)
    with pytest.raises(ValueError, match="hidden size 7.*has 32"):
        extract(tiny_qwen2_audio_adapter, inputs, cache_key_parts={"k": 1}, progress=False)


def test_safety_features_from_the_model(tiny_qwen2_audio_adapter, tiny_items, tmp_rrs_cache):
    adapter = tiny_qwen2_audio_adapter
    feats = safety_features(adapter, tiny_items, progress=False)
    harmful, benign = tiny_items[tiny_items.label == "harmful"], tiny_items[tiny_items.label == "benign"]
    h_ref = adapter.hidden_states(inputs_of(harmful, refusal=True), progress=False)
    h_ben = adapter.hidden_states(inputs_of(benign), progress=False)
    delta = mean_difference(h_ref, h_ben)
    torch.testing.assert_close(feats.delta, delta)
    c = contributions(delta, adapter.refusal_token_row())
    assert torch.equal(feats.mask, safety_mask(c)) and feats.model_id == adapter.model_id
    assert (feats.direction @ adapter.refusal_token_row()) > 0   # adding δ raises the "I" logit
    assert safety_features(adapter, tiny_items, top_m=25, progress=False).mask.sum() == 8  # 25% of 32
    with pytest.raises(ValueError, match="0 benign"):
        safety_features(adapter, harmful, progress=False)


def test_linear_probe():
    rng = np.random.default_rng(0)
    apart_h = torch.tensor(rng.normal(3, 1, (20, 4)), dtype=torch.float32)
    apart_b = torch.tensor(rng.normal(-3, 1, (20, 4)), dtype=torch.float32)
    assert linear_probe_accuracy(apart_h, apart_b, seed=0) == 1.0
    # noise in more dimensions than points: a probe fits it perfectly, so only held-out folds
    # (what the function promises) bring the accuracy down to chance
    mixed_h = torch.tensor(rng.normal(0, 1, (20, 200)), dtype=torch.float32)
    mixed_b = torch.tensor(rng.normal(0, 1, (20, 200)), dtype=torch.float32)
    assert linear_probe_accuracy(mixed_h, mixed_b, seed=0) < 0.75
    with pytest.raises(ValueError, match="at least 5 per class"):
        linear_probe_accuracy(apart_h[:4], apart_b)


def test_tsne_is_deterministic():
    h = torch.tensor(np.random.default_rng(1).normal(size=(12, 6)), dtype=torch.float32)
    a, b = tsne_2d(h, seed=0), tsne_2d(h, seed=0)
    assert a.shape == (12, 2) and np.array_equal(a, b)


def test_mean_distance():
    h = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, 2.0]])
    assert mean_distance(h, torch.zeros(2)) == pytest.approx((5 + 0 + 2) / 3)


def test_probe_table_gives_the_floor_a_probe_must_beat():
    from rrs.representations import probe_table

    rng = np.random.default_rng(0)
    labels = np.array(["harmful"] * 12 + ["benign"] * 18)
    apart = torch.tensor(np.r_[rng.normal(3, 1, (12, 4)), rng.normal(-3, 1, (18, 4))], dtype=torch.float32)
    same = torch.tensor(rng.normal(0, 1, (30, 4)), dtype=torch.float32)
    table = probe_table({"apart": apart, "same": same}, labels, seed=0).set_index("key")
    assert table.loc["apart", "probe_accuracy"] == 1.0 and table.loc["apart", "centroid_gap"] > 2
    assert (table.majority_accuracy == 0.6).all() and (table.n_harmful == 12).all() and (table.n_benign == 18).all()
    assert table.loc["same", "centroid_gap"] < 0.5
    with pytest.raises(ValueError, match="same: 29 representations but 30 labels"):
        probe_table({"same": same[:29]}, labels)
