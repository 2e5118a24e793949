"""A training run's settings: one dataclass, saved as config.json so `--resume` needs no command line.

Every default and its help text live here (and in PlateauOptions / GuardOptions for the controller and the
guard); the `train` verb's options are made from the fields, so a setting is written once. Kept free of torch
so the CLI can build its parser without importing an engine.
"""

from __future__ import annotations

import types
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from squeezecaffe.errors import UserError


def _opt(default, text: str, **cli):
    """A field that is also a `train` option: its help (and choices/metavar) next to its default."""
    return field(default=default, metadata={"help": text, **cli})


# a field the `train` verb fills another way (a positional, a repeated option, an option group)
NOT_AN_OPTION = types.MappingProxyType({"cli": False})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs to be rebuilt; saved as config.json so --resume needs no command line. The `train`
    verb's options are made from these fields (cli/common.add_dataclass_options): default and help live here.
    Frozen: a run's settings are decided once, before its directory is written."""

    model: str | None = field(default=None, metadata=NOT_AN_OPTION)  # the positional MODEL (a name or a variant)
    solver: str | None = _opt(None, "a hand-written solver.prototxt instead of a generated one (like caffe train)")
    data: str | None = _opt(None, "data directory written by build-lmdb")
    epochs: int | None = _opt(None, "epochs to train (default: the recipe's)")
    batch_size: int | None = _opt(None, "images per iteration (default: the recipe's)")
    test_batch_size: int | None = _opt(None, "images per validation batch")
    input: str | None = _opt(None, "network input HxW")
    classes: int | None = _opt(None, "must equal the dataset's (checked)")
    solver_set: dict[str, str] = field(default_factory=dict, metadata=NOT_AN_OPTION)  # --solver-set K=V, --base-lr
    engine: str = _opt("auto", "auto (real Caffe when built, else torch), torch or caffe")
    # the device options are shared with forward/time/solve (cli/engine._add_device_options)
    device: str = field(default="cpu", metadata=NOT_AN_OPTION)
    amp: str | None = field(default=None, metadata=NOT_AN_OPTION)
    channels_last: bool = field(default=False, metadata=NOT_AN_OPTION)
    gpu_transform: bool = field(default=False, metadata=NOT_AN_OPTION)
    data_in_memory: bool = field(default=False, metadata=NOT_AN_OPTION)
    workers: int = _opt(2, "data loader processes")
    seed: int = _opt(42, "seed of the fillers, crops, mirrors and dropout masks")
    keep: int = _opt(3, "snapshots kept (plus best.caffemodel)")
    weights: str | None = _opt(None, "initialise from a .caffemodel (fine-tuning): layers copied by name; one whose "
                                     "shape changed (a classifier for other classes) starts from its filler")
    # PlateauOptions fields except base_lr (their own option group)
    plateau: dict = field(default_factory=dict, metadata=NOT_AN_OPTION)
    allow_sorted: bool = _opt(False, "train even when the training database is in label order (refused by "
                                     "default)")
    recipe: str = _opt("default", "default (rate follows the batch, enough iterations for small sets), paper, or "
                                  "registry")
    guard: dict = field(default_factory=dict, metadata=NOT_AN_OPTION)  # GuardOptions fields (their own option group)
    tensorboard: bool = _opt(False, "also write TensorBoard event files into the run directory (needs the "
                                    "tensorboard extra)")
    # compress's retraining: masks / shared values held through training, and how a shared value's gradient is
    # formed from its members' (mean or sum)
    constraints: str | None = field(default=None, metadata=NOT_AN_OPTION)
    centroid_gradient: str = field(default="mean", metadata=NOT_AN_OPTION)
    normalize: str | None = _opt(None, "std: also divide each channel by the data's std (default: the recipe's; "
                                       "mean otherwise)", choices=["mean", "std"])
    freeze: list[str] = field(default_factory=list, metadata=NOT_AN_OPTION)  # --freeze LAYERS (repeatable, comma-separated)
    bn_images: int = _opt(4096, "before each validation and snapshot, re-estimate BatchNorm's statistics over the "
                                "latest N training images at the current weights (0: keep the running averages)",
                          metavar="N")

    def __post_init__(self) -> None:
        if self.bn_images < 0:
            raise UserError(f"--bn-images {self.bn_images}: give a number of images >= 0 (0: keep the running "
                            "averages)")


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
