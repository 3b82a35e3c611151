"""LEEP transferability (Nguyen et al., ICML 2020): how well a source model's outputs predict target labels."""

from __future__ import annotations

import numpy as np

from edge_smsp.core.errors import DataError

# Softmax outputs computed in float32 over many classes drift from 1 by ~1e-6; anything further is not a softmax.
_ROW_SUM_TOLERANCE = 1e-3


def leep(source_probs: np.ndarray, target_labels: np.ndarray) -> float:
    """LEEP score (<= 0, higher = more transferable) of source softmax outputs [n, Z] on target labels [n]."""
    probs, labels = _validated(source_probs, target_labels)
    n = probs.shape[0]
    # Labels need not be 0..k-1: only which samples share a label matters.
    _, label_index = np.unique(labels, return_inverse=True)
    joint = np.zeros((int(label_index.max()) + 1, probs.shape[1]), dtype=np.float64)
    np.add.at(joint, label_index, probs)
    joint /= n
    marginal = joint.sum(axis=0)
    # A source class no sample puts mass on has P(z) = 0; its conditional is irrelevant (weighted by 0), use 0.
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
    expected_empirical_prediction = np.einsum("iz,iz->i", probs, conditional[label_index])
    # Each sample's own mass guarantees a positive value; the floor only guards against float underflow.
    expected_empirical_prediction = np.maximum(expected_empirical_prediction, np.finfo(np.float64).tiny)
    return float(np.mean(np.log(expected_empirical_prediction)))


def _validated(source_probs: np.ndarray, target_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(source_probs)
    labels = np.asarray(target_labels)
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] == 0:
        raise DataError(
            f"LEEP needs source probabilities of shape [n, Z] with n, Z >= 1, got shape {probs.shape}"
        )
    if labels.ndim != 1 or labels.shape[0] != probs.shape[0]:
        raise DataError(
            f"LEEP needs one target label per sample: probabilities have {probs.shape[0]} rows, "
            f"labels have shape {labels.shape}"
        )
    if not np.issubdtype(probs.dtype, np.floating):
        raise DataError(f"LEEP source probabilities must be floats, got dtype {probs.dtype}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"LEEP target labels must be integers, got dtype {labels.dtype}")
    if labels.min() < 0:
        raise DataError(f"LEEP target labels must be >= 0, got {int(labels.min())}")
    probs = probs.astype(np.float64, copy=False)
    if not np.all(np.isfinite(probs)) or probs.min() < 0:
        raise DataError("LEEP source probabilities must be finite and non-negative (pass softmax outputs)")
    row_sums = probs.sum(axis=1)
    worst = int(np.argmax(np.abs(row_sums - 1.0)))
    if abs(row_sums[worst] - 1.0) > _ROW_SUM_TOLERANCE:
        raise DataError(
            f"LEEP source probabilities must sum to 1 per sample (softmax outputs); row {worst} sums to "
            f"{row_sums[worst]:.6g}"
        )
    return probs / row_sums[:, None], labels.astype(np.int64, copy=False)
