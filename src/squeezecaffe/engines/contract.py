"""What a training engine offers the Trainer, typed: the torch engine's adapter
(engines/torchcaffe/adapter.py) and real Caffe's (engines/pycaffe/solver.py) both satisfy `TrainingEngine`,
and train/engine.py picks between them. No framework is imported here: the Caffe side never loads torch
for this contract.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import Tensor

    from squeezecaffe.proto import pb
    from squeezecaffe.scoring import EvalResult


@dataclass
class IterationStats:
    """One iteration's figures. The torch engine leaves `loss` and `outputs` as 0-d tensors on the
    training device: reading one (float()) waits for the device to finish, so a caller reads them
    at display intervals (`read_scalars` reads many in one transfer), never every iteration."""

    iter: int  # the iteration just completed (counting from 1)
    loss: Tensor | float  # the objective averaged over iter_size passes
    lr: float  # the base rate used for this update (before lr_mult)
    outputs: dict[str, Tensor | float] = field(default_factory=dict)  # scalar train-net outputs, averaged over passes


@runtime_checkable
class TrainingEngine(Protocol):
    """A solver the Trainer steps, validates, snapshots and restores. Validation and snapshots happen when the
    Trainer asks (per epoch), never on the solver's own test_interval / snapshot counters."""

    sp: pb.SolverParameter  # the parsed solver.prototxt

    @property
    def iter(self) -> int:
        """Iterations completed."""
        ...

    def step(self, iters: int, callback: Callable[[IterationStats], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> None:
        """Run up to `iters` iterations; `should_stop` is asked after each (a signal ends the step early)."""
        ...

    def learning_rate(self) -> float:
        """The base rate the next update uses (the policy at this iteration times the LR scale)."""
        ...

    def set_lr_scale(self, scale: float) -> None:
        """Multiply base_lr by `scale` from the next iteration on (the plateau controller's drops)."""
        ...

    def snapshot(self) -> tuple[Path, Path]:
        """Write the caffemodel and the solver state; their paths."""
        ...

    def restore(self, state: str | Path, lr_scale: float = 1.0) -> None:
        """Continue from a solver state (weights, history, iteration) under the given LR scale."""
        ...

    def load_weights(self, path: str | Path) -> None:
        """Copy a caffemodel's blobs into the net by layer name."""
        ...

    def param_shapes(self) -> dict[str, list[tuple[int, ...]]]:
        """The TRAIN net's learned blobs by layer, in Caffe's shapes (what a weights file must fit)."""
        ...

    def train_source(self) -> Path:
        """The TRAIN Data layer's database."""
        ...

    def train_geometry(self) -> tuple[int, int]:
        """Records and batch size of the TRAIN Data layer: what an epoch is."""
        ...

    def classes(self) -> int:
        """Channels of the logits validation scores."""
        ...

    def validate(self) -> EvalResult:
        """Loss, top-1 and top-5 over the whole validation database once."""
        ...

    def reestimate_batchnorm(self, batches: int) -> int:
        """BatchNorm's statistics over the last `batches` training batches at the current weights; images used."""
        ...

    def close(self) -> None:
        """Stop the data readers (worker processes end with the run)."""
        ...
