"""Safety feature selection (docs/method.md, steps 3-6): pure tensor functions.

h0 are final-norm hidden states of the frozen model at the last input position, [N, H].
w_I is the LM-head row of the token "I", [H].
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass

import torch

from .io import atomic_path


def _check_2d(name: str, h: torch.Tensor) -> None:
    if h.ndim != 2:
        raise ValueError(f"{name} must be [N, H], got shape {tuple(h.shape)}")
    if h.shape[0] == 0:
        raise ValueError(f"{name} is empty: need at least one question")


def mean_difference(h_ref_harmful: torch.Tensor, h_benign: torch.Tensor) -> torch.Tensor:
    """Step 3: Δ = mean over harmful of h0_ref(x) − mean over benign of h0(b).

    h0_ref is read with the refusal instruction appended (step 2), h0(b) with the plain
    prompt (step 1). Returns [H] in float32.
    """
    _check_2d("h_ref_harmful", h_ref_harmful)
    _check_2d("h_benign", h_benign)
    if h_ref_harmful.shape[1] != h_benign.shape[1]:
        raise ValueError(f"hidden sizes differ: harmful {h_ref_harmful.shape[1]} vs benign {h_benign.shape[1]}")
    return h_ref_harmful.float().mean(0) - h_benign.float().mean(0)


def _check_same_size(delta: torch.Tensor, other: torch.Tensor, name: str) -> None:
    if delta.ndim != 1 or other.shape[-1] != delta.shape[0]:
        raise ValueError(f"hidden sizes differ: delta {tuple(delta.shape)} vs {name} {tuple(other.shape)}")


def contributions(delta: torch.Tensor, w_I: torch.Tensor) -> torch.Tensor:
    """Step 4: c = Δ ⊙ w_I, each feature's contribution to the "I" logit (Σ c = w_I·Δ)."""
    _check_same_size(delta, w_I, "w_I")
    return delta.float() * w_I.float()


def safety_mask(c: torch.Tensor, top_m: float | None = None) -> torch.Tensor:
    """Step 5: the safety features, as a bool mask [H].

    top_m=None: the features with c_j > 0 (the paper's default, "top 51%" in the code).
    top_m=m in (0, 100]: the ceil(m/100 · H) features with the largest c (the Top-m%
    ablation: 12.5 / 25 / 50); ties keep the lower feature index (stable sort).
    """
    if top_m is None:
        return c > 0
    if not (isinstance(top_m, (int, float)) and 0 < top_m <= 100):
        raise ValueError(f"top_m must be in (0, 100] (a percentage of features) or None, got {top_m!r}")
    hidden = c.shape[0]
    k = math.ceil(round(top_m * hidden / 100, 9))  # round: 16.1 * 1000 / 100 is 161.00000000000003
    order = torch.sort(c, descending=True, stable=True).indices
    mask = torch.zeros(hidden, dtype=torch.bool, device=c.device)
    mask[order[:k]] = True
    return mask


def safety_direction(delta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Step 5: δ = M ⊙ Δ (Δ with the non-safety features zeroed)."""
    _check_same_size(delta, mask, "mask")
    return delta.float() * mask.float()


def rrs_targets(h0_harmful: torch.Tensor, h0_benign: torch.Tensor, delta: torch.Tensor):
    """Step 6: fixed targets from the frozen model: (h0(x) + δ, h0(b) − δ).

    `delta` is δ, the masked direction from `safety_direction`. Both h0 use the plain
    prompt (docs/method.md step 1), not the refusal instruction.
    """
    _check_same_size(delta, h0_harmful, "h0_harmful")
    _check_same_size(delta, h0_benign, "h0_benign")
    return h0_harmful.float() + delta.float(), h0_benign.float() - delta.float()


def i_logit_shift(h: torch.Tensor, delta: torch.Tensor, w_I: torch.Tensor):
    """Change of the "I" logit when δ is added to / subtracted from h: (w_I·(h+δ) − w_I·h,
    w_I·(h−δ) − w_I·h), per row. With δ from positive contributions the first is > 0 and
    the second < 0 (docs/method.md step 5)."""
    _check_same_size(delta, h, "h")
    w = w_I.float()
    base = h.float() @ w
    return (h.float() + delta.float()) @ w - base, (h.float() - delta.float()) @ w - base


def compare_directions(a: torch.Tensor, b: torch.Tensor) -> dict:
    """How far apart two safety directions δ_a, δ_b are: features each keeps (non-zero),
    features both keep, their cosine and |δ_a − δ_b| / |δ_a|. Two masks that differ only in
    features of near-zero contribution give nearly the same δ, hence nearly the same RRS
    targets h0 ± δ."""
    _check_same_size(a, b, "b")
    a, b = a.float(), b.float()
    if not a.norm() > 0 or not b.norm() > 0:
        raise ValueError("a safety direction is all zeros: no feature kept")
    return {"kept_a": int((a != 0).sum()), "kept_b": int((b != 0).sum()),
            "kept_both": int(((a != 0) & (b != 0)).sum()),
            "cosine": float(torch.nn.functional.cosine_similarity(a, b, dim=0)),
            "relative_difference": float((a - b).norm() / a.norm())}


def direction_hash(direction: torch.Tensor, top_m: float | None) -> str:
    """Identifies a mask/direction: sha256 of top_m and δ's float32 bytes (16 hex digits)."""
    h = hashlib.sha256(f"top_m={top_m}".encode())
    h.update(direction.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class SafetyFeatures:
    """Δ, c, the mask and δ for one model and one Top-m% setting."""

    delta: torch.Tensor
    contributions: torch.Tensor
    mask: torch.Tensor
    direction: torch.Tensor
    top_m: float | None
    model_id: str
    hidden_size: int

    @classmethod
    def compute(cls, h_ref_harmful, h_benign, w_I, *, top_m=None, model_id: str) -> "SafetyFeatures":
        """Steps 3-5 from the frozen model's representations and w_I."""
        delta = mean_difference(h_ref_harmful, h_benign)
        c = contributions(delta, w_I)
        mask = safety_mask(c, top_m)
        return cls(delta, c, mask, safety_direction(delta, mask), top_m, model_id, int(delta.shape[0]))

    @property
    def direction_hash(self) -> str:
        return direction_hash(self.direction, self.top_m)

    def save(self, path) -> None:
        blob = {k: getattr(self, k) for k in ("delta", "contributions", "mask", "direction")}
        blob.update(top_m=self.top_m, model_id=self.model_id, hidden_size=self.hidden_size)
        with atomic_path(path) as tmp:
            torch.save({k: v.cpu() if torch.is_tensor(v) else v for k, v in blob.items()}, tmp)

    @classmethod
    def load(cls, path, *, model_id: str | None = None, hidden_size: int | None = None) -> "SafetyFeatures":
        """Load, refusing features made for another model id or hidden size."""
        blob = torch.load(path, map_location="cpu", weights_only=True)
        fields = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(blob, dict) or set(blob) != fields:
            raise ValueError(f"{path} is not a safety-features file (expected the fields {sorted(fields)})")
        if model_id is not None and blob["model_id"] != model_id:
            raise ValueError(f"{path}: safety features of {blob['model_id']!r}, not {model_id!r}")
        if hidden_size is not None and blob["hidden_size"] != hidden_size:
            raise ValueError(f"{path}: hidden size {blob['hidden_size']}, but the model has {hidden_size}")
        return cls(**blob)
