"""CIFAR-10 and CIFAR-100 in their two published layouts -> ArrayDataset (BGR 32x32 images, labels).

- Python batches (`cifar-10-python`): pickled dicts `data_batch_1..5`, `test_batch`, `batches.meta` (CIFAR-10);
  `train`, `test`, `meta` (CIFAR-100). `data` is N x 3072 uint8, each row the 1024 red, then green, then blue
  values of a 32x32 image row by row; labels under `labels` (CIFAR-10) or `fine_labels`/`coarse_labels`
  (CIFAR-100); class names under `label_names` / `fine_label_names` / `coarse_label_names`. The files were
  written by Python 2, so keys and names are bytes when read by Python 3.
- Binary (`cifar-10-binary`): `data_batch_1..5.bin`, `test_batch.bin`, `batches.meta.txt` (CIFAR-10: records of
  1 label byte + 3072 pixel bytes); `train.bin`, `test.bin`, `fine_label_names.txt`, `coarse_label_names.txt`
  (CIFAR-100: coarse label byte, fine label byte, 3072 pixel bytes).

SRC is the extracted folder (the one holding the files) or the downloaded .tar.gz itself. Pickles are read by an
unpickler that admits only what these files hold (dicts, lists, bytes, numpy arrays), so a foreign or malicious
pickle cannot run code; it fails with one line naming the file.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from squeezecaffe.data_tools.png_export import ArrayDataset
from squeezecaffe.errors import UserError

PIXELS = 32 * 32 * 3


@dataclass(frozen=True)
class Layout:
    """Which file holds what, for one dataset in one format."""

    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str


PICKLE = {"cifar10": Layout(tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta"),
          "cifar100": Layout(("train",), ("test",), "meta")}
BINARY = {"cifar10": Layout(tuple(f"data_batch_{i}.bin" for i in range(1, 6)), ("test_batch.bin",),
                            "batches.meta.txt"),
          "cifar100": Layout(("train.bin",), ("test.bin",), "{labels}_label_names.txt")}


class _Files:
    """The dataset's files by base name, from a folder (searched below it too) or a .tar.gz archive."""

    def __init__(self, src: Path) -> None:
        self.src = src
        self._members: dict[str, bytes] = {}
        if src.is_file():
            try:
                with tarfile.open(src) as tar:
                    for member in tar.getmembers():
                        if member.isfile():
                            data = tar.extractfile(member)
                            self._members[Path(member.name).name] = data.read() if data else b""
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise UserError(f"{src}: not a readable .tar.gz archive ({exc})") from None
        elif not src.is_dir():
            raise UserError(f"{src}: no such folder or archive")

    def where(self, name: str) -> str:
        return f"{self.src}:{name}" if self._members else str(self._path(name) or self.src / name)

    def _path(self, name: str) -> Path | None:
        direct = self.src / name
        if direct.is_file():
            return direct
        return next(iter(sorted(self.src.rglob(name))), None)

    def has(self, name: str) -> bool:
        return name in self._members if self._members else self._path(name) is not None

    def read(self, name: str) -> bytes:
        if self._members:
            return self._members[name]
        path = self._path(name)
        assert path is not None
        return path.read_bytes()


class _SafeUnpickler(pickle.Unpickler):
    """Admits the globals a pickled numpy array needs (as Python 2 or 3 wrote it) and nothing else."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
        ("numpy", "dtype"), ("_codecs", "encode"), ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's own, wherever this numpy keeps it
        return super().find_class({"copy_reg": "copyreg"}.get(module, module), name)


def _unpickle(files: _Files, name: str) -> dict:
    try:
        obj = _SafeUnpickler(io.BytesIO(files.read(name)), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise UserError(f"{files.where(name)}: not a CIFAR python batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{files.where(name)}: not a CIFAR python batch (holds a {type(obj).__name__}, not a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _names(values: object, where: str) -> tuple[str, ...]:
    if not isinstance(values, list | tuple) or not values:
        raise UserError(f"{where}: no class names")
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in values)


def _to_bgr(data: np.ndarray, where: str) -> np.ndarray:
    """N x 3072 rows (R plane, G plane, B plane) -> N x 32 x 32 x 3 BGR."""
    if data.ndim != 2 or data.shape[1] != PIXELS:
        raise UserError(f"{where}: data is {data.shape}, expected N x {PIXELS}")
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32)[:, ::-1].transpose(0, 2, 3, 1))


def _pickle_split(files: _Files, names: tuple[str, ...], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in names:
        batch = _unpickle(files, name)
        where = files.where(name)
        if "data" not in batch or label_key not in batch:
            raise UserError(f"{where}: not a CIFAR python batch of this dataset (keys: {', '.join(map(str, batch))}; "
                            f"expected data and {label_key})")
        data = np.asarray(batch["data"])
        if data.dtype != np.uint8:
            raise UserError(f"{where}: data is {data.dtype}, expected uint8")
        lab = np.asarray(batch[label_key], dtype=np.int64)
        if len(lab) != len(data):
            raise UserError(f"{where}: {len(data)} images but {len(lab)} labels")
        images.append(_to_bgr(data, where))
        labels.append(lab)
    return np.concatenate(images), np.concatenate(labels)


def _binary_split(files: _Files, names: tuple[str, ...], label_bytes: int,
                  label_index: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    record = label_bytes + PIXELS
    for name in names:
        raw = np.frombuffer(files.read(name), np.uint8)
        if raw.size == 0 or raw.size % record:
            raise UserError(f"{files.where(name)}: {raw.size} bytes is not a whole number of {record}-byte CIFAR "
                            "records (truncated, or another dataset's file)")
        rows = raw.reshape(-1, record)
        labels.append(rows[:, label_index].astype(np.int64))
        images.append(_to_bgr(rows[:, label_bytes:], files.where(name)))
    return np.concatenate(images), np.concatenate(labels)


def load(dataset: str, src: str | Path, labels: str = "fine") -> ArrayDataset:
    """CIFAR-10 or CIFAR-100 from SRC in whichever layout it holds; `labels` picks CIFAR-100's fine (100) or
    coarse (20) classes."""
    if labels not in ("fine", "coarse"):
        raise UserError(f"--labels {labels}: expected fine or coarse")
    files = _Files(Path(src))
    pickled, binary = PICKLE[dataset], BINARY[dataset]
    if all(files.has(n) for n in (*pickled.train, *pickled.test, pickled.meta)):
        meta = _unpickle(files, pickled.meta)
        name_key, label_key = (("label_names", "labels") if dataset == "cifar10"
                               else (f"{labels}_label_names", f"{labels}_labels"))
        class_names = _names(meta.get(name_key), f"{files.where(pickled.meta)} ({name_key})")
        splits = {"train": _pickle_split(files, pickled.train, label_key),
                  "test": _pickle_split(files, pickled.test, label_key)}
    elif all(files.has(n) for n in (*binary.train, *binary.test)):
        meta_name = binary.meta.format(labels=labels)
        if not files.has(meta_name):
            raise UserError(f"{files.where(meta_name)}: file not found (the class names of the binary layout)")
        text = files.read(meta_name).decode("utf-8", "replace")
        class_names = _names([line.strip() for line in text.splitlines() if line.strip()], files.where(meta_name))
        label_bytes, index = (1, 0) if dataset == "cifar10" else (2, 0 if labels == "coarse" else 1)
        splits = {"train": _binary_split(files, binary.train, label_bytes, index),
                  "test": _binary_split(files, binary.test, label_bytes, index)}
    else:
        missing = [n for n in (*pickled.train, *pickled.test, pickled.meta) if not files.has(n)]
        raise UserError(f"{src}: neither {dataset}'s python batches ({', '.join(missing[:3])} missing) nor its "
                        f"binary files ({', '.join(binary.train[:1] + binary.test)})")
    return ArrayDataset(dataset, class_names, splits, str(Path(src).resolve()))
