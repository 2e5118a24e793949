"""Resolved settings for one generated net: a registry row's defaults + a data directory's manifest + user
overrides, as the net's size (NetConfig) and its schedule (TrainSchedule)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from squeezecaffe.data_tools.manifest import read_manifest
from squeezecaffe.errors import UserError
from squeezecaffe.netgen.config import NetConfig
from squeezecaffe.netgen.registry import ModelSpec
from squeezecaffe.solvers.schedule import TrainSchedule


def _positive(value: int | float | None, what: str) -> None:
    if value is not None and value <= 0:
        raise UserError(f"{what} must be positive, got {value}")


def resolve(
    spec: ModelSpec,
    *,
    classes: int | None = None,
    input_size: tuple[int, int] | None = None,
    batch_size: int | None = None,
    test_batch_size: int | None = None,
    train_size: int | None = None,
    val_size: int | None = None,
    epochs: int | None = None,
    data_dir: str | Path | None = None,
    use_mean_file: bool = False,
    normalize: str | None = None,
) -> tuple[NetConfig, TrainSchedule]:
    """Combine the row's dataset defaults, a data directory's manifest (if given) and overrides.

    Precedence: explicit argument > manifest of `data_dir` > the registry row's defaults. `normalize` "std"
    divides each channel by the data directory's standard deviation after the mean (needs `data_dir`).
    """
    for value, what in ((classes, "--classes"), (batch_size, "--batch-size"), (test_batch_size, "--test-batch-size"),
                        (train_size, "--train-size"), (val_size, "--val-size"), (epochs, "--epochs")):
        _positive(value, what)
    d = spec.data
    cfg = NetConfig(
        classes=d.classes, input_size=d.input_size, channels=3, batch_size=d.batch_size,
        test_batch_size=d.test_batch_size, train_source=f"data/{d.key}/train_lmdb",
        val_source=f"data/{d.key}/val_lmdb", mean_value=d.mean_value, mean_file=None, crop=d.crop,
        mirror=d.mirror)
    sched = TrainSchedule(
        train_size=d.train_size, val_size=d.val_size, epochs=d.epochs, iter_size=d.iter_size,
        base_lr=d.base_lr, weight_decay=d.weight_decay, power=d.power, momentum=d.momentum)
    if data_dir is not None:
        data_dir = Path(data_dir)
        m = read_manifest(data_dir)
        cfg = replace(
            cfg, classes=m.classes, channels=m.channels, train_source=str(data_dir / "train_lmdb"),
            val_source=str(data_dir / "val_lmdb"), mean_value=tuple(m.mean_values),
            mean_file=str(data_dir / "mean.binaryproto") if use_mean_file else None, encoded=m.encoded)
        # A model that crops keeps its input size; otherwise the net sees the stored images whole, or, when they
        # were stored with a border (build-lmdb --pad), random crops of the unpadded size (the centre one in TEST).
        if m.mixed_sizes and not cfg.crop:
            raise UserError(f"{data_dir}: its images have several sizes (build-lmdb --encoded without --resize, or "
                            f"splits of different sizes) and {spec.name} takes them whole: rebuild it with --resize HxW")
        if m.pad:
            if not cfg.crop:
                cfg = replace(cfg, input_size=(m.height - 2 * m.pad, m.width - 2 * m.pad))
            cfg = replace(cfg, crop=True)
        elif not cfg.crop:
            cfg = replace(cfg, input_size=(m.height, m.width))
        sched = replace(sched, train_size=m.split_count("train"), val_size=m.split_count("val"))
    if normalize not in (None, "mean", "std"):
        raise UserError(f"--normalize {normalize}: choose mean or std")
    if normalize == "std":
        if data_dir is None:
            raise UserError("--normalize std takes each channel's spread from the data: give --data DIR")
        stds = read_manifest(Path(data_dir)).std_values
        if not stds:
            raise UserError(f"{data_dir}: its manifest has no per-channel std (built by an older build-lmdb; rebuild)")
        if min(stds) <= 0:
            raise UserError(f"{data_dir}: a channel has no spread (std {min(stds)}); --normalize std cannot divide by it")
        cfg = replace(cfg, std_value=tuple(float(f"{v:.6g}") for v in stds))
    if classes is not None:
        cfg = replace(cfg, classes=classes)
    if cfg.classes < 2:  # a softmax over one class is right whatever the weights: nothing would be learned
        if classes is not None:
            raise UserError(f"--classes {classes}: a classifier needs two or more classes")
        raise UserError(f"{data_dir} has one class: a classifier needs two or more (built from one class's folder "
                        "instead of the folder that holds the class folders?)")
    if input_size is not None:
        cfg = replace(cfg, input_size=input_size)
    if cfg.crop and cfg.input_size[0] != cfg.input_size[1]:
        raise UserError(f"model {spec.name} crops its input and Caffe's crop_size is square; "
                        f"got input {cfg.input_size[0]}x{cfg.input_size[1]}")
    if batch_size is not None:
        cfg = replace(cfg, batch_size=batch_size)
    if test_batch_size is not None:
        cfg = replace(cfg, test_batch_size=test_batch_size)
    if train_size is not None:
        sched = replace(sched, train_size=train_size)
    if val_size is not None:
        sched = replace(sched, val_size=val_size)
    if epochs is not None:
        sched = replace(sched, epochs=epochs)
    return cfg, sched
