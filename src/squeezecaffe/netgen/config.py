"""What a generated net is sized by: classes, input, batch sizes, data sources and transform settings."""

from __future__ import annotations

import re
from dataclasses import dataclass

from squeezecaffe.errors import UserError


@dataclass(frozen=True)
class NetConfig:
    classes: int
    input_size: tuple[int, int]  # H, W fed to conv1
    channels: int
    batch_size: int
    test_batch_size: int
    train_source: str
    val_source: str
    mean_value: tuple[float, ...]
    mean_file: str | None  # when set, used instead of mean_value
    crop: bool  # crop input_size out of larger stored images
    mirror: bool
    bn_fraction: float | None = None  # BatchNorm moving_average_fraction in train_val (None: Caffe's 0.999)
    std_value: tuple[float, ...] | None = None  # per-channel std (BGR) the net divides by after the mean (None: not)
    encoded: bool = False  # the databases hold image files: the Data layers decode them to `channels`


def parse_hw(text: str, what: str = "--input") -> tuple[int, int]:
    """'64x64' or '64' -> (64, 64); anything else is a one-line error."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", text)
    if not m:
        raise UserError(f"{what} '{text}': expected HxW, e.g. 64x64")
    h, w = int(m.group(1)), int(m.group(2) or m.group(1))
    if h <= 0 or w <= 0:
        raise UserError(f"{what} '{text}': height and width must be positive")
    return h, w
