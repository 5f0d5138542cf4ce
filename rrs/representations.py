"""Representations h(x) with an on-disk cache, and the probes read off them.

`extract` caches each [N, H] tensor under cache_dir()/representations/<key>.pt, where the
key hashes the model (id, dtype, weights fingerprint), the caller's description of the
data (`cache_key_parts`: ids, prompt, mode, refusal flag, ...) and the inputs themselves
(text, mode, audio bytes), so a stale or mismatched cache cannot be returned silently.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .features import SafetyFeatures
from .io import atomic_path
from .modes import H0_PROMPT, ModelInput
from .paths import cache_dir


def inputs_digest(inputs: Sequence[ModelInput]) -> str:
    h = hashlib.sha256()
    for x in inputs:
        h.update(json.dumps([x.mode, x.text]).encode())
        h.update(b"\0" if x.audio is None else hashlib.sha256(np.ascontiguousarray(x.audio, np.float32)).digest())
    return h.hexdigest()


def cache_key(adapter, inputs: Sequence[ModelInput], cache_key_parts: dict, model=None) -> str:
    from .models.base import weights_fingerprint

    if model is None:  # the vanilla model (adapter methods disable an attached LoRA)
        with adapter.vanilla():
            weights = weights_fingerprint(adapter.model)
    else:
        weights = weights_fingerprint(model)
    blob = json.dumps({"model_id": adapter.model_id, "revision": getattr(adapter, "revision", None),
                       "dtype": str(adapter.dtype), "weights": weights,
                       "parts": cache_key_parts, "inputs": inputs_digest(inputs)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cache_path(adapter, inputs: Sequence[ModelInput], cache_key_parts: dict, model=None) -> Path:
    return cache_dir() / "representations" / f"{cache_key(adapter, list(inputs), cache_key_parts, model)}.pt"


def extract(adapter, inputs: Sequence[ModelInput], *, cache_key_parts: dict, batch_size: int = 8,
            progress: bool = True, model=None, use_cache: bool = True) -> torch.Tensor:
    """h(x) for every input ([N, H] float32, CPU), read from / written to the cache."""
    inputs = list(inputs)
    path = cache_path(adapter, inputs, cache_key_parts, model)
    if use_cache and path.is_file():
        h = torch.load(path, map_location="cpu", weights_only=True)
        if h.ndim != 2 or h.shape[1] != adapter.hidden_size:
            raise ValueError(f"cached representations {path} have hidden size {h.shape[-1]}, but "
                             f"{adapter.model_id} has {adapter.hidden_size}; delete the file")
        if h.shape[0] != len(inputs):
            raise ValueError(f"cached representations {path} hold {h.shape[0]} rows for {len(inputs)} inputs; "
                             "delete the file")
        return h
    h = adapter.hidden_states(inputs, batch_size=batch_size, progress=progress, model=model)
    if use_cache:
        with atomic_path(path) as tmp:
            torch.save(h.contiguous(), tmp)
    return h


def question_inputs(items, mode: str, *, prompt: str | None = H0_PROMPT, refusal: bool = False) -> list[ModelInput]:
    """The inputs h(x) is read from: rrs.data.model_inputs with the H0 prompt by default."""
    from .data import model_inputs

    return model_inputs(items, mode, prompt=prompt, refusal=refusal)


def safety_features(adapter, items, *, mode: str = "audio-text", top_m: float | None = None,
                    batch_size: int = 8, progress: bool = True) -> SafetyFeatures:
    """docs/method.md steps 1-5 on `items` (DataFrame: id, text, label, audio): h0_ref of the
    harmful questions (H0 prompt + refusal instruction), h0 of the benign ones (H0 prompt),
    then Δ, c, the mask and δ."""
    harmful, benign = items[items.label == "harmful"], items[items.label == "benign"]
    if harmful.empty or benign.empty:
        raise ValueError(f"need harmful and benign questions; got {len(harmful)} harmful, {len(benign)} benign")
    parts = dict(prompt=H0_PROMPT, mode=mode)
    h_ref = extract(adapter, question_inputs(harmful, mode, refusal=True), batch_size=batch_size, progress=progress,
                    cache_key_parts={**parts, "ids": list(map(str, harmful.id)), "refusal": True})
    h_ben = extract(adapter, question_inputs(benign, mode), batch_size=batch_size, progress=progress,
                    cache_key_parts={**parts, "ids": list(map(str, benign.id)), "refusal": False})
    return SafetyFeatures.compute(h_ref, h_ben, adapter.refusal_token_row(), top_m=top_m, model_id=adapter.model_id)


def linear_probe_accuracy(h_harmful: torch.Tensor, h_benign: torch.Tensor, seed: int = 0) -> float:
    """Stratified 5-fold CV accuracy of a logistic regression separating harmful from benign.

    High accuracy = the two sets form separable zones (docs/method.md observation 2)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if min(len(h_harmful), len(h_benign)) < 5:
        raise ValueError(f"5-fold CV needs at least 5 per class; got {len(h_harmful)} harmful, {len(h_benign)} benign")
    x = torch.cat([h_harmful, h_benign]).float().numpy()
    y = np.r_[np.ones(len(h_harmful)), np.zeros(len(h_benign))]
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    return float(cross_val_score(probe, x, y, cv=folds).mean())


def probe_table(reps: dict, labels, seed: int = 0):
    """Per key of `reps` (a mode, an epoch, ...: [N, H] representations in the order of
    `labels`, "harmful" / "benign"): linear_probe_accuracy, the accuracy of always guessing
    the larger class (what a probe must beat), the centroid gap (distance between the
    harmful and benign centroids over the mean distance of a point to its own centroid;
    0 = one centre) and n per label."""
    import pandas as pd

    labels = np.asarray(labels)
    rows = []
    for key, h in reps.items():
        h = torch.as_tensor(h).float()
        if len(h) != len(labels):
            raise ValueError(f"{key}: {len(h)} representations but {len(labels)} labels")
        harmful, benign = h[labels == "harmful"], h[labels == "benign"]
        mu_h, mu_b = harmful.mean(0), benign.mean(0)
        spread = (mean_distance(harmful, mu_h) * len(harmful) + mean_distance(benign, mu_b) * len(benign)) / len(h)
        rows.append({"key": key, "probe_accuracy": linear_probe_accuracy(harmful, benign, seed=seed),
                     "majority_accuracy": max(len(harmful), len(benign)) / len(h),
                     "centroid_gap": float((mu_h - mu_b).norm()) / spread,
                     "n_harmful": len(harmful), "n_benign": len(benign)})
    return pd.DataFrame(rows)


def tsne_2d(h: torch.Tensor, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """[N, 2] t-SNE embedding. PCA init, not a random one, so the same input gives the same map;
    `seed` goes to sklearn's randomized PCA (seeds 0 and 1 gave the same maps at 12 and 200 points)."""
    from sklearn.manifold import TSNE

    x = torch.as_tensor(h).float().numpy()
    if len(x) < 3:
        raise ValueError(f"t-SNE needs at least 3 points, got {len(x)}")
    tsne = TSNE(n_components=2, perplexity=min(perplexity, (len(x) - 1) / 3), init="pca", random_state=seed)
    from threadpoolctl import threadpool_limits

    # one OpenMP thread: on a busy CPU, sklearn's multi-threaded Barnes-Hut is 10x slower
    with threadpool_limits(1):
        return tsne.fit_transform(x)


def mean_distance(h: torch.Tensor, centroid: torch.Tensor) -> float:
    """Mean Euclidean distance of the rows of h to `centroid`."""
    return float((torch.as_tensor(h).float() - torch.as_tensor(centroid).float()).norm(dim=-1).mean())
