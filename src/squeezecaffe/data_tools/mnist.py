"""MNIST and Fashion-MNIST: four IDX files each (train/t10k images and labels, often gzipped) -> ArrayDataset.

Debian's `dataset-fashion-mnist` package puts Fashion-MNIST's files under /usr/share/datasets/fashion-mnist/;
that folder is the demo's and the built-in default dataset's source.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from squeezecaffe.data_tools.idx import read_idx
from squeezecaffe.data_tools.png_export import ArrayDataset, exported_info
from squeezecaffe.data_tools.png_export import class_folder as _class_folder
from squeezecaffe.data_tools.png_export import export_pngs as _export_pngs
from squeezecaffe.errors import UserError

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
DIGITS = tuple(str(d) for d in range(10))
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def class_folder(label: int) -> str:
    """Fashion-MNIST's folder for a label: '0_t-shirt_top' ... '9_ankle_boot'."""
    return _class_folder(label, CLASS_NAMES)


def _find(src: Path, stem: str, name: str) -> Path:
    for candidate in (f"{stem}.gz", stem):
        if (src / candidate).is_file():
            return src / candidate
    hint = f" (install it with: apt-get install {DEBIAN_PACKAGE})" if src == DEFAULT_SOURCE else ""
    raise UserError(f"{src / stem}.gz: {name} file not found{hint}")


def load_split(src: Path, split: str, name: str = "Fashion-MNIST",
               classes: int = len(CLASS_NAMES)) -> tuple[np.ndarray, np.ndarray]:
    images_name, labels_name = FILES[split]
    images, labels = read_idx(_find(src, images_name, name)), read_idx(_find(src, labels_name, name))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"{src}: {split} images {images.shape} and labels {labels.shape} do not match")
    if labels.max(initial=0) >= classes:
        raise UserError(f"{src}: {split} labels go up to {labels.max()}, {name} has {classes}")
    return images, labels


def load(src: str | Path, name: str = "fashion-mnist") -> ArrayDataset:
    """Fashion-MNIST (class names from its documentation) or MNIST (the digits), from a folder of IDX files."""
    src = Path(src)
    names = CLASS_NAMES if name == "fashion-mnist" else DIGITS
    shown = {"fashion-mnist": "Fashion-MNIST", "mnist": "MNIST"}[name]
    splits = {split: load_split(src, split, shown, len(names)) for split in FILES}
    return ArrayDataset(name, names, splits, str(src.resolve()))


def export_pngs(out: str | Path, src: str | Path = DEFAULT_SOURCE, jobs: int = 0, force: bool = False) -> dict:
    """Fashion-MNIST's PNG tree (see png_export); reuses a complete tree unless `force` (without reading SRC)."""
    info = exported_info(Path(out))
    if info is not None and not force:
        return info
    return _export_pngs(out, load(src), jobs=jobs, force=force)
