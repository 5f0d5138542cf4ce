"""Every formula of docs/method.md steps 3-6 on small, hand-checked tensors."""
from __future__ import annotations

import math

import pytest
import torch

from rrs.features import (SafetyFeatures, compare_directions, contributions, i_logit_shift, mean_difference,
                          rrs_targets, safety_direction, safety_mask)

T = torch.tensor


def test_mean_difference():
    h_ref = T([[1.0, 2.0, 0.0], [3.0, 4.0, 2.0]])      # mean [2, 3, 1]
    h_benign = T([[0.0, 1.0, 1.0], [2.0, 1.0, 3.0]])   # mean [1, 1, 2]
    torch.testing.assert_close(mean_difference(h_ref, h_benign), T([1.0, 2.0, -1.0]))


def test_mean_difference_errors():
    with pytest.raises(ValueError, match="h_ref_harmful is empty"):
        mean_difference(torch.zeros(0, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="h_benign is empty"):
        mean_difference(torch.ones(2, 3), torch.zeros(0, 3))
    with pytest.raises(ValueError, match="harmful 3 vs benign 4"):
        mean_difference(torch.ones(2, 3), torch.ones(2, 4))


def test_contributions_and_direction():
    delta, w = T([1.0, 2.0, -1.0, 0.5]), T([2.0, -1.0, -3.0, 0.0])
    c = contributions(delta, w)
    torch.testing.assert_close(c, T([2.0, -2.0, 3.0, 0.0]))
    mask = safety_mask(c)  # paper default: c > 0
    assert mask.tolist() == [True, False, True, False]
    torch.testing.assert_close(safety_direction(delta, mask), T([1.0, 0.0, -1.0, 0.0]))
    with pytest.raises(ValueError, match="hidden sizes differ"):
        contributions(delta, T([1.0, 2.0]))


C8 = T([0.5, -1.0, 3.0, 0.5, 2.0, -0.2, 0.1, 0.5])  # ranking: 2, 4, then ties 0, 3, 7, then 6, 5, 1


@pytest.mark.parametrize("m, kept", [
    (12.5, [2]),                 # ceil(0.125 * 8) = 1
    (25.0, [2, 4]),              # 2
    (50.0, [2, 4, 0, 3]),        # 4: of the tied 0.5s, the lower indices first
    (30.0, [2, 4, 0]),           # ceil(2.4) = 3
    (100.0, list(range(8))),
])
def test_top_m_mask(m, kept):
    mask = safety_mask(C8, m)
    assert sorted(torch.nonzero(mask).flatten().tolist()) == sorted(kept)
    assert mask.sum() == math.ceil(m * 8 / 100)


@pytest.mark.parametrize("m, hidden, count", [
    (7, 100, 7), (14, 100, 14), (28, 100, 28), (55, 100, 55), (56, 100, 56),  # ceil(m / 100 * 100) is m + 1
    (16.1, 1000, 161), (32.2, 1000, 322),  # ceil(m * 1000 / 100) is m * 10 + 1: the float error `round` removes
    (12.5, 100, 13),  # ceil(12.5)
])
def test_top_m_count_is_exact_for_round_percentages(m, hidden, count):
    assert safety_mask(torch.linspace(-1, 1, hidden), m).sum() == count


@pytest.mark.parametrize("m", [0, -5, 100.5, 1000, float("nan"), "25"])
def test_top_m_out_of_range(m):
    with pytest.raises(ValueError, match=r"\(0, 100\]"):
        safety_mask(C8, m)


def test_targets_and_i_logit_shift():
    h0_h, h0_b = T([[1.0, 1.0, 1.0]]), T([[0.0, 2.0, 4.0], [1.0, 1.0, 1.0]])
    delta = T([0.5, 0.0, -1.0])
    t_h, t_b = rrs_targets(h0_h, h0_b, delta)
    torch.testing.assert_close(t_h, T([[1.5, 1.0, 0.0]]))
    torch.testing.assert_close(t_b, T([[-0.5, 2.0, 5.0], [0.5, 1.0, 2.0]]))
    # with δ built from the positive contributions, adding it raises the "I" logit
    w = T([2.0, 1.0, -1.0])
    d = safety_direction(delta, safety_mask(contributions(delta, w)))
    up, down = i_logit_shift(h0_b, d, w)
    torch.testing.assert_close(up, T([2.0, 2.0]))    # w·δ = 2*0.5 + (-1)(-1) = 2
    torch.testing.assert_close(down, T([-2.0, -2.0]))


def test_safety_features_roundtrip_and_refusal(tmp_path):
    feats = SafetyFeatures.compute(T([[1.0, 2.0, 0.0]]), T([[0.0, 0.0, 1.0]]), T([1.0, -1.0, -1.0]),
                                   top_m=None, model_id="m")
    torch.testing.assert_close(feats.direction, T([1.0, 0.0, -1.0]))  # Δ=[1,2,-1], c=[1,-2,1]
    assert feats.hidden_size == 3
    path = tmp_path / "features.pt"
    feats.save(path)
    back = SafetyFeatures.load(path, model_id="m", hidden_size=3)
    torch.testing.assert_close(back.direction, feats.direction)
    assert back.top_m is None and back.direction_hash == feats.direction_hash
    assert SafetyFeatures.compute(T([[1.0, 2.0, 0.0]]), T([[0.0, 0.0, 1.0]]), T([1.0, -1.0, -1.0]),
                                  top_m=50, model_id="m").direction_hash != feats.direction_hash
    with pytest.raises(ValueError, match="'m', not 'other'"):
        SafetyFeatures.load(path, model_id="other")
    with pytest.raises(ValueError, match="hidden size 3.*has 4"):
        SafetyFeatures.load(path, hidden_size=4)


def test_compare_directions():
    a, b = T([3.0, 4.0, 0.0, 0.0]), T([3.0, 0.0, 0.0, 1.0])
    got = compare_directions(a, b)
    assert (got["kept_a"], got["kept_b"], got["kept_both"]) == (2, 2, 1)
    assert got["cosine"] == pytest.approx(9 / (5 * math.sqrt(10)))
    assert got["relative_difference"] == pytest.approx(math.sqrt(17) / 5)
    same = compare_directions(a, a)
    assert same["cosine"] == pytest.approx(1.0) and same["relative_difference"] == 0
    with pytest.raises(ValueError, match="all zeros"):
        compare_directions(a, torch.zeros(4))
    with pytest.raises(ValueError, match="hidden sizes differ"):
        compare_directions(a, T([1.0, 2.0]))
