"""What the training-speed benches share: their common options and the one fixed batch every contender trains on
(bench/train_speed.py, bench/caffe_vs_torch.py, bench/host_memory.py)."""

from __future__ import annotations

import argparse

import numpy as np


def add_timing_options(p: argparse.ArgumentParser, *, models: str, iters: int) -> None:
    """--models, --classes, --warmup, --iters and --json, as every speed bench takes them."""
    p.add_argument("--models", default=models)
    p.add_argument("--classes", type=int, default=200)
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    p.add_argument("--iters", type=int, default=iters, help="timed iterations")
    p.add_argument("--json", help="also write the figures to this JSON file")


def fixed_batch(batch: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels): a seeded Bx3x64x64 batch of pixel-scale values and its float labels, the same in every
    process, so contenders timed apart train on the same numbers."""
    rng = np.random.default_rng(0)
    return (rng.normal(scale=50.0, size=(batch, 3, 64, 64)).astype(np.float32),
            rng.integers(0, classes, size=batch).astype(np.float32))
