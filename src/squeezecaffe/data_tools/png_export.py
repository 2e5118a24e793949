"""A dataset held in arrays (IDX, CIFAR batches) -> a class-folder tree of PNG files that `build-lmdb` reads like
any photos.

Going through PNG files keeps every imported dataset on the path a user's own images take (decode,
convert_imageset keys, mean, padding), instead of a side door into the LMDB writer. The tree:
OUT/<split>/<label>_<name>/<index>.png plus OUT/words.txt mapping each folder to its class name. Folder names
start with the zero-padded label, so their sorted order is the dataset's label order. The tree is built under a
temporary name and renamed into place when complete (a marker file, written last, says it is); an existing
complete tree is reused.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from squeezecaffe.errors import UserError
from squeezecaffe.fileio import atomic_write_text, ensure_writable_dir, fsync_dir

DONE_MARKER = "export.json"
CHUNK = 2000  # images per writer job


@dataclass(frozen=True)
class ArrayDataset:
    """Images as uint8 arrays: (N, H, W) gray or (N, H, W, 3) in BGR (OpenCV's order); labels index class_names."""

    name: str
    class_names: tuple[str, ...]
    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    source: str


def class_folder(label: int, class_names: tuple[str, ...]) -> str:
    """'0_t-shirt_top', or '07_bee' for 100 classes: the label first (zero-padded) so sorted folders keep label
    order."""
    width = len(str(len(class_names) - 1))
    slug = re.sub(r"[^a-z0-9-]+", "_", class_names[label].lower()).strip("_") or "class"
    return f"{label:0{width}d}_{slug}"


def _write_pngs(job: tuple[Path, np.ndarray, np.ndarray, int, tuple[str, ...]]) -> None:
    folder, images, labels, first, names = job
    for offset, (img, label) in enumerate(zip(images, labels, strict=True)):
        path = folder / class_folder(int(label), names) / f"{first + offset:05d}.png"
        if not cv2.imwrite(str(path), img):
            raise OSError(f"{path}: could not write PNG")


def is_exported(out: Path) -> bool:
    return (Path(out) / DONE_MARKER).is_file()


def exported_info(out: Path) -> dict | None:
    """The marker of a finished export in OUT (its dataset, source and counts), or None."""
    marker = Path(out) / DONE_MARKER
    return json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else None


def export_pngs(out: str | Path, dataset: ArrayDataset, jobs: int = 0, force: bool = False) -> dict:
    """Write the PNG tree; returns the marker's content (source and per-split counts). Reuses a complete tree
    unless `force`."""
    out = Path(out)
    info = exported_info(out)
    if info is not None and not force:
        return info
    if out.exists() and not force:
        raise UserError(f"{out}: exists but is not a finished {dataset.name} export; pass --force to replace it")
    names = dataset.class_names
    for split, (images, labels) in dataset.splits.items():
        if len(images) != len(labels) or (len(labels) and int(labels.max()) >= len(names)):
            raise UserError(f"{dataset.source}: {split} holds {len(images)} images, {len(labels)} labels up to "
                            f"{int(labels.max(initial=0))}; {dataset.name} has {len(names)} classes")
    ensure_writable_dir(out.parent if out.parent != Path("") else Path("."))
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        work = []
        for split, (images, labels) in dataset.splits.items():
            for label in range(len(names)):
                (tmp / split / class_folder(label, names)).mkdir(parents=True)
            work += [(tmp / split, images[i : i + CHUNK], labels[i : i + CHUNK], i, names)
                     for i in range(0, len(images), CHUNK)]
        jobs = jobs or os.cpu_count() or 1
        if jobs == 1:
            for job in work:
                _write_pngs(job)
        else:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
            with ctx.Pool(jobs) as pool:
                pool.map(_write_pngs, work)
        # words.txt in the Tiny ImageNet format (`folder<TAB>name`): build-lmdb puts the names in labels.txt
        atomic_write_text(tmp / "words.txt",
                          "".join(f"{class_folder(i, names)}\t{n}\n" for i, n in enumerate(names)))
        info = {"dataset": dataset.name, "source": dataset.source,
                **{s: len(labels) for s, (_, labels) in dataset.splits.items()}}
        atomic_write_text(tmp / DONE_MARKER, json.dumps(info, indent=2) + "\n")  # the marker: written last
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info
