"""Fashion-MNIST's IDX files -> a class-folder tree of PNG files that `build-lmdb` reads like any photos.

Debian's `dataset-fashion-mnist` package puts the four gzipped IDX files (the format of the original
MNIST distribution: a big-endian header of magic number and dimensions, then raw uint8) under
/usr/share/datasets/fashion-mnist/. Going through PNG files keeps the demo on the same path a user's
own images take (decode, convert_imageset keys, mean), instead of a side door into the LMDB writer.

The tree: OUT/train/<label>_<name>/<index>.png (60,000) and OUT/test/... (10,000), plus OUT/words.txt
mapping each folder to its human-readable class name. Folder names start with the label digit, so
their sorted order is the dataset's label order. The tree is built under a temporary name and renamed
into place when complete; an existing complete tree is reused.
"""

from __future__ import annotations

import gzip
import json
import multiprocessing as mp
import os
import shutil
import uuid
from pathlib import Path

import cv2
import numpy as np

from squeezecaffe.errors import UserError
from squeezecaffe.fileio import atomic_write_text, ensure_writable_dir, fsync_dir

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
DONE_MARKER = "export.json"
IDX_DTYPES = {0x08: np.uint8}


def class_folder(label: int) -> str:
    """'0_t-shirt_top' ... '9_ankle_boot': the label first so that sorted folders keep label order."""
    slug = CLASS_NAMES[label].lower().replace("/", "_").replace(" ", "_")
    return f"{label}_{slug}"


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally .gz) as an array; the header says the element type and the dimensions."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, EOFError) as exc:
        raise UserError(f"{path}: not a readable gzip file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise UserError(f"{path}: not an IDX file (bad magic number)")
    dtype, ndim = raw[2], raw[3]
    if dtype not in IDX_DTYPES:
        raise UserError(f"{path}: IDX element type 0x{dtype:02x} is not supported (expected unsigned bytes)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path}: IDX header is cut off")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise UserError(f"{path}: IDX file holds {len(raw)} bytes, its header {'x'.join(map(str, dims))} "
                        f"needs {expected}")
    return np.frombuffer(raw, IDX_DTYPES[dtype], offset=header).reshape(dims)


def _find(src: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (src / name).is_file():
            return src / name
    hint = f" (install it with: apt-get install {DEBIAN_PACKAGE})" if src == DEFAULT_SOURCE else ""
    raise UserError(f"{src / stem}.gz: Fashion-MNIST file not found{hint}")


def load_split(src: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_name, labels_name = FILES[split]
    images, labels = read_idx(_find(src, images_name)), read_idx(_find(src, labels_name))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"{src}: {split} images {images.shape} and labels {labels.shape} do not match")
    if labels.max(initial=0) >= len(CLASS_NAMES):
        raise UserError(f"{src}: {split} labels go up to {labels.max()}, Fashion-MNIST has {len(CLASS_NAMES)}")
    return images, labels


def _write_pngs(job: tuple[Path, np.ndarray, np.ndarray, int]) -> None:
    folder, images, labels, first = job
    for offset, (img, label) in enumerate(zip(images, labels, strict=True)):
        path = folder / class_folder(int(label)) / f"{first + offset:05d}.png"
        if not cv2.imwrite(str(path), img):
            raise OSError(f"{path}: could not write PNG")


def is_exported(out: Path) -> bool:
    return (Path(out) / DONE_MARKER).is_file()


def export_pngs(out: str | Path, src: str | Path = DEFAULT_SOURCE, jobs: int = 0, force: bool = False) -> dict:
    """Write the PNG tree; returns the per-split counts. Reuses a complete tree unless `force`."""
    out, src = Path(out), Path(src)
    if is_exported(out) and not force:
        return json.loads((out / DONE_MARKER).read_text(encoding="utf-8"))
    if out.exists() and not force:
        raise UserError(f"{out}: exists but is not a finished Fashion-MNIST export; pass --force to replace it")
    splits = {split: load_split(src, split) for split in FILES}
    ensure_writable_dir(out.parent if out.parent != Path("") else Path("."))
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        work = []
        for split, (images, labels) in splits.items():
            for label in range(len(CLASS_NAMES)):
                (tmp / split / class_folder(label)).mkdir(parents=True)
            work += [(tmp / split, images[i : i + 2000], labels[i : i + 2000], i) for i in range(0, len(images), 2000)]
        jobs = jobs or os.cpu_count() or 1
        if jobs == 1:
            for job in work:
                _write_pngs(job)
        else:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
            with ctx.Pool(jobs) as pool:
                pool.map(_write_pngs, work)
        # words.txt in the Tiny ImageNet format (`folder<TAB>name`): build-lmdb puts the names in labels.txt
        atomic_write_text(tmp / "words.txt", "".join(f"{class_folder(i)}\t{n}\n" for i, n in enumerate(CLASS_NAMES)))
        info = {"source": str(src.resolve()), **{s: len(labels) for s, (_, labels) in splits.items()}}
        atomic_write_text(tmp / DONE_MARKER, json.dumps(info, indent=2) + "\n")  # the marker: written last
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info
