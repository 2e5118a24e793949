"""Magnitude pruning: keep the `kept` largest |w| of a blob (its own threshold per layer), zero the rest."""

from __future__ import annotations

import numpy as np


def magnitude_mask(weights: np.ndarray, kept: int) -> np.ndarray:
    """Boolean mask of the `kept` largest-magnitude entries; ties broken by position, so the mask is the same on
    every machine."""
    flat = np.abs(np.asarray(weights, np.float64)).reshape(-1)
    if kept >= flat.size:
        return np.ones(weights.shape, bool)
    order = np.argsort(-flat, kind="stable")
    mask = np.zeros(flat.size, bool)
    mask[order[:kept]] = True
    return mask.reshape(weights.shape)
