"""How long and how fast a net trains: the schedule a solver.prototxt is written from, and the one place epochs
become iterations."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainSchedule:
    train_size: int
    val_size: int
    epochs: int
    iter_size: int
    base_lr: float
    weight_decay: float
    power: float
    momentum: float
    solver_type: str = "Nesterov"
    lr_policy: str = "poly"
    world: int = 1  # data-parallel processes: each runs `batch` images an iteration, so an epoch has 1/world the iterations


def iterations_per_epoch(train_size: int, batch_size: int, iter_size: int = 1) -> int:
    """The one place epochs become iterations: ceil(train_size / (batch * iter_size))."""
    return max(1, math.ceil(train_size / (batch_size * iter_size)))


def test_iterations(val_size: int, test_batch_size: int) -> int:
    """Batches that cover the validation set once (the last batch wraps around, as Caffe's Data layer does)."""
    return max(1, math.ceil(val_size / test_batch_size))
