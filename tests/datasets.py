"""Small synthetic image datasets the tests build themselves (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def pattern_image(label: int, index: int, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """A class-dependent BGR pattern with noise, so images differ and classes are learnable."""
    rng = np.random.default_rng(label * 1000 + index)
    h, w = size
    img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    img[:, :, label % 3] += np.uint8(120)
    img[(label * 7) % h : (label * 7) % h + h // 4, :, :] = 200
    return img


def write_tiny_imagenet(root: Path, classes: int = 3, per_class: int = 4, val_per_class: int = 2,
                        test: int = 2, size: tuple[int, int] = (64, 64)) -> Path:
    wnids = [f"n{1000 + i:08d}" for i in range(classes)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")  # unsorted on purpose
    (root / "words.txt").write_text("".join(f"{w}\tthing {i}, object {i}\n" for i, w in enumerate(wnids)))
    for c, wnid in enumerate(wnids):
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for i in range(per_class):
            cv2.imwrite(str(folder / f"{wnid}_{i}.JPEG"), pattern_image(c, i, size))
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for c, wnid in enumerate(wnids):
        for i in range(val_per_class):
            name = f"val_{c}_{i}.JPEG"
            cv2.imwrite(str(root / "val" / "images" / name), pattern_image(c, 100 + i, size))
            lines.append(f"{name}\t{wnid}\t0\t0\t10\t10")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (root / "test" / "images").mkdir(parents=True)
    for i in range(test):
        cv2.imwrite(str(root / "test" / "images" / f"test_{i}.JPEG"), pattern_image(i % classes, 500 + i, size))
    return root


def write_class_folders(root: Path, classes: int = 3, per_class: int = 5, size: tuple[int, int] = (32, 32),
                        ext: str = ".png") -> Path:
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            cv2.imwrite(str(folder / f"img_{i}{ext}"), pattern_image(c, i, size))
    return root


def small_data_dir(root: Path, per_class: int, size: tuple[int, int], classes: int = 3) -> Path:
    """PNG class folders -> a build-lmdb data directory (train_lmdb, val_lmdb with a quarter held out, mean)."""
    from squeezecaffe.cli import main

    src = write_class_folders(root / "images", classes=classes, per_class=per_class, size=size, ext=".png")
    assert main(["build-lmdb", str(src), str(root / "data"), "--val-fraction", "0.25", "--quiet", "--jobs", "1"]) == 0
    return root / "data"
