"""A training run's settings: one dataclass, saved as config.json so `--resume` needs no command line.

Every default and its help text live here (and in PlateauOptions / GuardOptions for the controller and the
guard); the `train` verb's options are made from the fields, so a setting is written once. Kept free of torch
so the CLI can build its parser without importing an engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from squeezecaffe.engines.device import DeviceOptions
from squeezecaffe.errors import UserError
from squeezecaffe.options import NOT_AN_OPTION, from_json_object, option
from squeezecaffe.solvers.request import same_option
from squeezecaffe.train.guard import GuardOptions
from squeezecaffe.train.plateau import PlateauOptions
from squeezecaffe.train.rundir import CONFIG, read_json

# BatchNorm re-estimation reads at most this share of the training set per epoch. On a small set 4,096 images are
# about as many forward passes as the epoch itself trains on; a quarter of the set gave the same validation top-1
# on the snapshots tried, within a few images of 400 (by hand). bench/early_stop.py measures what the re-estimation,
# validation and snapshot cost per epoch (docs/training.md, "BatchNorm statistics").
BN_EPOCH_SHARE = 0.25


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs to be rebuilt; saved as config.json so --resume needs no command line. The `train`
    verb's options are made from these fields (cli/common.add_dataclass_options): default and help live here.
    Frozen: a run's settings are decided once, before its directory is written."""

    model: str | None = field(default=None, metadata=NOT_AN_OPTION)  # the positional MODEL (a name or a variant)
    solver: str | None = option(None, "a hand-written solver.prototxt instead of a generated one (like caffe train)")
    data: str | None = same_option("data")
    epochs: int | None = same_option("epochs")
    batch_size: int | None = same_option("batch_size")
    test_batch_size: int | None = same_option("test_batch_size")
    input: str | None = same_option("input")
    classes: int | None = same_option("classes")
    solver_set: dict[str, str] = field(default_factory=dict, metadata=NOT_AN_OPTION)  # --solver-set K=V, --base-lr
    engine: str = option("auto", "auto (real Caffe when built, else torch), torch or caffe")
    # device, channels_last, amp, ...: their own group, shared with forward/time/solve (engines/device.py)
    device_options: DeviceOptions = field(default_factory=DeviceOptions, metadata=NOT_AN_OPTION)
    workers: int = option(2, "data loader processes")
    seed: int = option(42, "seed of the fillers, crops, mirrors and dropout masks")
    keep: int = option(3, "snapshots kept (plus best.caffemodel)")
    weights: str | None = option(None, "initialise from a .caffemodel (fine-tuning): layers copied by name; one whose "
                                     "shape changed (a classifier for other classes) starts from its filler")
    # the controller's and the guard's settings: their own option groups (train/plateau.py, train/guard.py)
    plateau: PlateauOptions = field(default_factory=PlateauOptions, metadata=NOT_AN_OPTION)
    allow_sorted: bool = option(False, "train even when the training database is in label order (refused by "
                                     "default)")
    recipe: str = same_option("recipe")
    guard: GuardOptions = field(default_factory=GuardOptions, metadata=NOT_AN_OPTION)
    tensorboard: bool = option(False, "also write TensorBoard event files into the run directory (needs the "
                                    "tensorboard extra)")
    # compress's retraining: masks / shared values held through training, and how a shared value's gradient is
    # formed from its members' (mean or sum)
    constraints: str | None = field(default=None, metadata=NOT_AN_OPTION)
    centroid_gradient: str = field(default="mean", metadata=NOT_AN_OPTION)
    normalize: str | None = same_option("normalize")
    freeze: list[str] = field(default_factory=list, metadata=NOT_AN_OPTION)  # --freeze LAYERS (repeatable, comma-separated)
    bn_images: int = option(4096, "before each validation and snapshot, re-estimate BatchNorm's statistics over the "
                                "latest N training images at the current weights, at most a quarter of the "
                                "training set (0: keep the running averages)", metavar="N")

    def __post_init__(self) -> None:
        if self.bn_images < 0:
            raise UserError(f"--bn-images {self.bn_images}: give a number of images >= 0 (0: keep the running "
                            "averages)")


# config.json of runs written before the device options became their own group held them at the top level
_FLAT_DEVICE_KEYS = ("device", "amp", "channels_last", "gpu_transform", "data_in_memory")


def load_config(raw: dict, path: Path) -> TrainConfig:
    """config.json -> TrainConfig, naming an unknown key or a wrong type in one line (a hand-edited file)."""
    raw = dict(raw)
    flat = {key: raw.pop(key) for key in _FLAT_DEVICE_KEYS if key in raw}
    if flat:
        raw["device_options"] = {**flat, **raw.get("device_options", {})}
    return from_json_object(TrainConfig, raw, path)


def read_run_config(run_dir: Path) -> tuple[TrainConfig, Path]:
    """A run directory's config.json: its settings and the solver.prototxt it trains (stored beside them)."""
    path = Path(run_dir) / CONFIG
    raw = read_json(path)
    solver = raw.pop("solver_path", None)
    if not isinstance(solver, str):
        raise UserError(f"{path}: no solver_path (config.json is written by `train`; was it edited?)")
    return load_config(raw, path), Path(solver)
