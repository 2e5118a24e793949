"""Sparse positions as relative indices with a bounded gap, as Deep Compression stores them.

Each stored entry holds the distance from the previous entry minus one, in [0, 2^index_bits - 1]. A gap
larger than the bound is bridged by filler entries, each a step of exactly 2^index_bits with no weight of its
own (the weight stream codes them with the extra symbol FILLER = number of clusters).
"""

from __future__ import annotations

import numpy as np


def to_relative(positions: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(gap codes, is_filler) for sorted flat positions."""
    positions = np.asarray(positions, np.int64)
    step_max = 1 << index_bits
    steps = np.diff(np.concatenate([[-1], positions]))
    fillers = (steps - 1) // step_max
    counts = fillers + 1
    total = int(counts.sum())
    codes = np.full(total, step_max - 1, np.int64)
    last = np.cumsum(counts) - 1
    codes[last] = steps - fillers * step_max - 1
    is_filler = np.ones(total, bool)
    is_filler[last] = False
    return codes, is_filler


def from_relative(codes: np.ndarray) -> np.ndarray:
    """Flat position of every entry (fillers included)."""
    return np.cumsum(np.asarray(codes, np.int64) + 1) - 1
