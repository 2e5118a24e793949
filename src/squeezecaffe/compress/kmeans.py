"""Weight sharing: 1-D k-means of a layer's surviving weights, centroids initialised linearly over [min, max].

Han et al. compare random, density-based and linear initialisation and find linear best: it keeps centroids
out in the tails, where the few large weights that matter most live. In one dimension the clusters are
intervals between the midpoints of sorted centroids, so each iteration is a searchsorted and two bincounts.
"""

from __future__ import annotations

import numpy as np


def kmeans_1d(values: np.ndarray, k: int, iterations: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(float32 centroids [k], int32 cluster of each value). Centroids that lose every member keep their
    position (unused codes cost nothing after Huffman coding)."""
    v = np.asarray(values, np.float64).reshape(-1)
    if v.size == 0:
        return np.zeros(k, np.float32), np.zeros(0, np.int32)
    lo, hi = float(v.min()), float(v.max())
    centroids = np.linspace(lo, hi, k) if k > 1 else np.array([v.mean()])
    labels = np.full(v.size, -1, np.int64)
    for _ in range(iterations):
        new = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, v) if k > 1 else np.zeros(v.size, np.int64)
        if np.array_equal(new, labels):
            break
        labels = new
        counts = np.bincount(labels, minlength=k)
        sums = np.bincount(labels, weights=v, minlength=k)
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
    return centroids.astype(np.float32), labels.astype(np.int32)
