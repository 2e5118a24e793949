"""A training run's settings: one dataclass, saved as config.json so `--resume` needs no command line.

Every default lives here (and in PlateauOptions / GuardOptions for the controller and the guard); the `train`
verb's options read them, so a default is written once. Kept free of torch so the CLI can build its parser
without importing an engine.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from squeezecaffe.errors import UserError


@dataclass
class TrainConfig:
    """Everything a run needs to be rebuilt; saved as config.json so --resume needs no command line."""

    model: str | None = None
    solver: str | None = None  # a hand-written solver.prototxt instead of a generated one
    data: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    test_batch_size: int | None = None
    input: str | None = None
    classes: int | None = None
    solver_set: dict[str, str] = field(default_factory=dict)
    engine: str = "auto"
    device: str = "cpu"
    amp: str | None = None
    channels_last: bool = False
    gpu_transform: bool = False
    data_in_memory: bool = False
    workers: int = 2
    seed: int = 42
    keep: int = 3
    weights: str | None = None
    plateau: dict = field(default_factory=dict)  # PlateauOptions fields except base_lr
    allow_sorted: bool = False  # train on a database in label order (refused otherwise: see data_tools/order.py)
    recipe: str = "default"  # solver/transform settings for the model, data size and batch (netgen/recipes.py)
    guard: dict = field(default_factory=dict)  # GuardOptions fields (train/guard.py)
    tensorboard: bool = False  # also write TensorBoard event files into the run directory
    constraints: str | None = None  # masks / shared values held through training (engines/torchcaffe/constraints.py)
    centroid_gradient: str = "mean"  # how a shared value's gradient is formed from its members' (mean or sum)
    normalize: str | None = None  # "std": divide each channel by the data's std after the mean (None: the recipe's)
    freeze: list[str] = field(default_factory=list)  # layer names (or fnmatch patterns) trained with lr_mult 0


def load_config(raw: dict, path: Path) -> TrainConfig:
    """config.json -> TrainConfig, naming an unknown key or a wrong type in one line (a hand-edited file)."""
    known = {f.name: f for f in fields(TrainConfig)}
    for key, value in raw.items():
        if key not in known:
            raise UserError(f"{path}: unknown key {key!r} (known: {', '.join(known)})")
        f = known[key]
        expected = (type(f.default_factory()) if f.default_factory is not MISSING
                    else type(f.default) if f.default is not None else None)
        if expected is None or value is None:
            continue
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            continue
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise UserError(f"{path}: {key} is {value!r}, expected {expected.__name__}")
    return TrainConfig(**raw)
