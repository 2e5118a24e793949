"""Weight sharing: 1-D k-means of a layer's surviving weights, centroids initialised linearly over [min, max].

Han et al. compare random, density-based and linear initialisation and find linear best: it keeps centroids
out in the tails, where the few large weights that matter most live. In one dimension the clusters are
intervals between the midpoints of sorted centroids, so on sorted values an iteration is k binary searches and a
prefix sum: Lloyd's iterations run until no value changes cluster (then every weight sits on its nearest centroid
and every centroid is its members' mean), which heavy-tailed and pruned layers need hundreds to thousands of.
"""

from __future__ import annotations

import warnings

import numpy as np

MAX_ITERATIONS = 100_000  # a stated cap, far above what the heavy-tailed and pruned test sets need


class KMeansNotConverged(UserWarning):
    """The cap was reached with clusters still changing: the codebook is usable but not a k-means fixed point."""


def kmeans_1d(values: np.ndarray, k: int, iterations: int = MAX_ITERATIONS) -> tuple[np.ndarray, np.ndarray]:
    """(float32 centroids [k], int32 cluster of each value), iterated to convergence (or `iterations`, with a
    KMeansNotConverged warning). A value on a midpoint goes to the lower cluster. Centroids that lose every
    member keep their position (unused codes cost nothing after Huffman coding)."""
    v = np.asarray(values, np.float64).reshape(-1)
    if v.size == 0:
        return np.zeros(k, np.float32), np.zeros(0, np.int32)
    if k == 1:
        return np.array([v.mean()], np.float32), np.zeros(v.size, np.int32)
    order = np.sort(v)
    prefix = np.concatenate([[0.0], np.cumsum(order)])
    centroids = np.linspace(float(order[0]), float(order[-1]), k)
    ends = None
    for _ in range(iterations):
        # cluster j holds the sorted values in [ends[j-1], ends[j]): those <= the j-th midpoint and above the last
        new_ends = np.append(np.searchsorted(order, (centroids[1:] + centroids[:-1]) / 2, side="right"), v.size)
        if ends is not None and np.array_equal(new_ends, ends):
            break
        ends = new_ends
        starts = np.concatenate([[0], ends[:-1]])
        counts = ends - starts
        sums = prefix[ends] - prefix[starts]
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
    else:
        warnings.warn(f"k-means of {v.size:,} values into {k} clusters stopped at its cap of {iterations:,} "
                      "iterations with clusters still changing", KMeansNotConverged, stacklevel=2)
    labels = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, v, side="left")
    return centroids.astype(np.float32), labels.astype(np.int32)
