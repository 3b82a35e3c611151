"""LogME (research only: the rank study compared it with LEEP and the prototypes; the product does not use it)."""

from __future__ import annotations

import math

import numpy as np
import torch

from edge_smsp.core.errors import DataError


def logme(features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """LogME (You et al., ICML 2021): mean over classes of the per-sample log maximum evidence of a Bayesian
    linear regression from the features to that class's one-hot target. Higher = more transferable."""
    f = np.asarray(features.numpy() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    y = np.asarray(labels.numpy() if isinstance(labels, torch.Tensor) else labels).astype(np.int64)
    if f.ndim != 2 or len(f) != len(y) or len(f) < 2:
        raise DataError(f"LogME needs features [N, D] and N labels, N >= 2; got {f.shape} and {y.shape}")
    n, d = f.shape
    left, singular, _ = np.linalg.svd(f, full_matrices=False)
    rank = int(np.sum(singular > 1e-10 * max(singular.max(), 1e-300)))
    left, eigen = left[:, :rank], singular[:rank] ** 2
    evidences = []
    for label in np.unique(y):
        target = (y == label).astype(np.float64)
        projection = left.T @ target
        outside = float(target @ target - projection @ projection)  # the part no linear map of f can fit
        alpha, beta = 1.0, 1.0
        for _ in range(100):
            shrink = beta * eigen / (alpha + beta * eigen)
            gamma = float(shrink.sum())
            weight_norm = float(np.sum(beta**2 * eigen * projection**2 / (alpha + beta * eigen) ** 2))
            residual = float(np.sum((alpha * projection / (alpha + beta * eigen)) ** 2)) + max(outside, 0.0)
            new_alpha, new_beta = gamma / (weight_norm + 1e-12), (n - gamma) / (residual + 1e-12)
            converged = abs(new_alpha / new_beta - alpha / beta) <= 1e-4 * (alpha / beta)
            alpha, beta = new_alpha, new_beta
            if converged:
                break
        log_det = float(np.sum(np.log(alpha + beta * eigen))) + (d - rank) * math.log(alpha)
        evidence = (
            d / 2 * math.log(alpha)
            + n / 2 * math.log(beta)
            - log_det / 2
            - beta / 2 * residual
            - alpha / 2 * weight_norm
            - n / 2 * math.log(2 * math.pi)
        )
        evidences.append(evidence / n)
    return float(np.mean(evidences))
