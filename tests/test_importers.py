"""`squeezecaffe import`: CIFAR-10/100 in the python-batch and binary layouts, MNIST IDX, and bad files.

The CIFAR python batches are written here as Python 2's cPickle wrote the published ones (protocol 2, str
keys/values as BINSTRING, numpy arrays by `numpy.core.multiarray._reconstruct`), by a small opcode writer, so the
loader is held to the bytes users download rather than to what Python 3 would pickle.
"""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from squeezecaffe.cli import main
from squeezecaffe.data_tools import cifar
from squeezecaffe.errors import UserError
from tests.test_fashion_demo import write_idx

# ------------------------------------------------------------------ Python 2 pickles, opcode by opcode

def _p2(value) -> bytes:
    if isinstance(value, bytes):  # a Python 2 str
        return b"T" + struct.pack("<I", len(value)) + value
    if isinstance(value, bool):
        return b"\x88" if value else b"\x89"
    if isinstance(value, int):
        return b"J" + struct.pack("<i", value)
    if value is None:
        return b"N"
    if isinstance(value, tuple):
        return b"(" + b"".join(_p2(v) for v in value) + b"t"
    if isinstance(value, list):
        return b"]" + (b"(" + b"".join(_p2(v) for v in value) + b"e" if value else b"")
    if isinstance(value, dict):
        return b"}(" + b"".join(_p2(k) + _p2(v) for k, v in value.items()) + b"u"
    if isinstance(value, np.ndarray):
        assert value.dtype == np.uint8
        dtype = b"cnumpy\ndtype\n" + _p2((b"u1", 0, 1)) + b"R" + _p2((3, b"|", None, None, None, -1, -1, 0)) + b"b"
        state = b"(" + _p2(1) + _p2(tuple(value.shape)) + dtype + _p2(False) + _p2(value.tobytes()) + b"t"
        return (b"cnumpy.core.multiarray\n_reconstruct\n" + b"(cnumpy\nndarray\n" + _p2((0,)) + _p2(b"b") + b"tR"
                + state + b"b")
    raise TypeError(type(value))


def py2_pickle(obj: dict) -> bytes:
    return b"\x80\x02" + _p2(obj) + b"."


# ------------------------------------------------------------------ synthetic CIFAR in both layouts

def planes(n: int, seed: int) -> np.ndarray:
    """n images as CIFAR rows: 1024 R, 1024 G, 1024 B values each."""
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def expected_bgr(row: np.ndarray) -> np.ndarray:
    r, g, b = row.reshape(3, 32, 32)
    return np.stack([b, g, r], axis=-1)


CIFAR10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def cifar10_python(root: Path, per_batch: int = 4) -> dict:
    root.mkdir(parents=True)
    truth = {"train": [], "test": []}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data, labels = planes(per_batch, i), [(i + j) % 10 for j in range(per_batch)]
        batch = {b"batch_label": b"batch", b"labels": labels, b"data": data,
                 b"filenames": [b"x_%d.png" % j for j in range(per_batch)]}
        (root / name).write_bytes(py2_pickle(batch))
        truth["test" if name == "test_batch" else "train"] += list(zip(data, labels, strict=True))
    (root / "batches.meta").write_bytes(py2_pickle({b"label_names": CIFAR10_NAMES, b"num_cases_per_batch": 4,
                                                     b"num_vis": 3072}))
    return truth


def cifar100_splits(per_split: int, seed: int) -> dict:
    """split -> (images as CIFAR rows, fine labels, coarse labels)."""
    return {split: (planes(per_split, seed + i), [(7 * j + 3 * i + 1) % 100 for j in range(per_split)],
                    [(3 * j + i) % 20 for j in range(per_split)]) for i, split in enumerate(("train", "test"))}


def cifar100_python(root: Path) -> dict:
    root.mkdir(parents=True)
    truth = cifar100_splits(6, 10)
    for split, (data, fine, coarse) in truth.items():
        (root / split).write_bytes(py2_pickle({b"filenames": [b"f"] * 6, b"batch_label": b"b", b"fine_labels": fine,
                                               b"coarse_labels": coarse, b"data": data}))
    (root / "meta").write_bytes(py2_pickle({b"fine_label_names": [b"class %d" % k for k in range(100)],
                                            b"coarse_label_names": [b"super %d" % k for k in range(20)]}))
    return truth


def cifar10_binary(root: Path, per_batch: int = 3) -> dict:
    root.mkdir(parents=True)
    truth = {"train": [], "test": []}
    for i, name in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]):
        data, labels = planes(per_batch, 20 + i), [(2 * i + j) % 10 for j in range(per_batch)]
        (root / name).write_bytes(b"".join(bytes([lab]) + row.tobytes() for row, lab in zip(data, labels,
                                                                                           strict=True)))
        truth["test" if name.startswith("test") else "train"] += list(zip(data, labels, strict=True))
    (root / "batches.meta.txt").write_text("\n".join(n.decode() for n in CIFAR10_NAMES) + "\n\n")
    return truth


def cifar100_binary(root: Path) -> dict:
    root.mkdir(parents=True)
    truth = cifar100_splits(5, 30)
    for split, (data, fine, coarse) in truth.items():
        (root / f"{split}.bin").write_bytes(b"".join(bytes([c, f]) + row.tobytes()
                                                     for row, c, f in zip(data, coarse, fine, strict=True)))
    (root / "fine_label_names.txt").write_text("".join(f"class_{k}\n" for k in range(100)))
    (root / "coarse_label_names.txt").write_text("".join(f"super_{k}\n" for k in range(20)))
    return truth


def read_tree(out: Path, split: str) -> list[tuple[np.ndarray, int]]:
    """Every PNG of a split in index order, with the label its folder names."""
    files = sorted((out / split).glob("*/*.png"), key=lambda p: int(p.stem))
    return [(cv2.imread(str(p), cv2.IMREAD_UNCHANGED), int(p.parent.name.split("_")[0])) for p in files]


# ------------------------------------------------------------------ tests

@pytest.mark.parametrize("writer", [cifar10_python, cifar10_binary])
def test_cifar10_both_layouts_give_exact_pixels_labels_and_names(writer, tmp_path: Path, capsys) -> None:
    truth = writer(tmp_path / "src")
    assert main(["import", "cifar10", str(tmp_path / "src"), str(tmp_path / "png"), "--jobs", "1"]) == 0
    assert "wrote" in capsys.readouterr().out
    for split in ("train", "test"):
        got = read_tree(tmp_path / "png", split)
        assert len(got) == len(truth[split])
        for (image, label), (row, true_label) in zip(got, truth[split], strict=True):
            np.testing.assert_array_equal(image, expected_bgr(row))
            assert label == true_label
    words = (tmp_path / "png" / "words.txt").read_text().splitlines()
    assert words[0] == "0_airplane\tairplane" and words[9] == "9_truck\ttruck"


@pytest.mark.parametrize("writer", [cifar100_python, cifar100_binary])
@pytest.mark.parametrize("labels", ["fine", "coarse"])
def test_cifar100_fine_and_coarse_labels(writer, labels: str, tmp_path: Path) -> None:
    truth = writer(tmp_path / "src")
    assert main(["import", "cifar100", str(tmp_path / "src"), str(tmp_path / "png"), "--labels", labels,
                 "--jobs", "1"]) == 0
    data, fine, coarse = truth["test"]
    got = read_tree(tmp_path / "png", "test")
    assert [label for _, label in got] == (fine if labels == "fine" else coarse)
    np.testing.assert_array_equal(got[3][0], expected_bgr(data[3]))
    folders = sorted(p.name for p in (tmp_path / "png" / "train").iterdir())
    assert len(folders) == (100 if labels == "fine" else 20)
    assert folders[7] == ("07_class_7" if labels == "fine" else "07_super_7")  # names from the meta file
    assert folders == sorted(folders, key=lambda f: int(f.split("_")[0]))  # sorted order == label order


def test_the_downloaded_archive_is_read_without_extracting(tmp_path: Path) -> None:
    truth = cifar10_python(tmp_path / "cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    dataset = cifar.load("cifar10", archive)
    assert len(dataset.splits["train"][0]) == len(truth["train"])
    np.testing.assert_array_equal(dataset.splits["test"][0][1], expected_bgr(truth["test"][1][0]))


def test_import_straight_to_lmdb(tmp_path: Path) -> None:
    cifar10_binary(tmp_path / "src", per_batch=10)
    assert main(["import", "cifar10", str(tmp_path / "src"), str(tmp_path / "png"), "--lmdb", str(tmp_path / "db"),
                 "--val-fraction", "0.25", "--quiet", "--jobs", "1"]) == 0
    import json

    manifest = json.loads((tmp_path / "db" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["count"] + manifest["splits"]["val"]["count"] == 50
    assert manifest["channels"] == 3 and (manifest["height"], manifest["width"]) == (32, 32)


def test_a_finished_export_of_another_dataset_is_not_taken(tmp_path: Path, capsys) -> None:
    cifar10_binary(tmp_path / "c10")
    cifar100_binary(tmp_path / "c100")
    assert main(["import", "cifar10", str(tmp_path / "c10"), str(tmp_path / "png"), "--jobs", "1"]) == 0
    assert main(["import", "cifar10", str(tmp_path / "c10"), str(tmp_path / "png")]) == 0
    assert "already there" in capsys.readouterr().out
    assert main(["import", "cifar100", str(tmp_path / "c100"), str(tmp_path / "png")]) == 2
    assert "holds a finished cifar10 export, not cifar100" in capsys.readouterr().err


def test_mnist_idx_through_the_same_verb(tmp_path: Path) -> None:
    src = tmp_path / "idx"
    src.mkdir()
    for stem, n in (("train", 20), ("t10k", 10)):
        write_idx(src / f"{stem}-images-idx3-ubyte.gz", np.full((n, 28, 28), 7, np.uint8))
        write_idx(src / f"{stem}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    assert main(["import", "mnist", str(src), str(tmp_path / "png"), "--jobs", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "png" / "test").iterdir()) == [f"{d}_{d}" for d in range(10)]


def _truncate(root: Path) -> None:
    raw = (root / "data_batch_3").read_bytes()
    (root / "data_batch_3").write_bytes(raw[: len(raw) // 2])


def _foreign_pickle(root: Path) -> None:
    (root / "data_batch_2").write_bytes(pickle.dumps(io.StringIO, protocol=2))  # a global outside the allow list


def _not_a_dict(root: Path) -> None:
    (root / "test_batch").write_bytes(py2_pickle({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))


def _wrong_keys(root: Path) -> None:
    (root / "data_batch_1").write_bytes(py2_pickle({b"fine_labels": [0], b"data": np.zeros((1, 3072), np.uint8)}))


@pytest.mark.parametrize("damage, message", [
    (_truncate, "data_batch_3: not a CIFAR python batch"),
    (_foreign_pickle, "data_batch_2: not a CIFAR python batch (UnpicklingError: refusing to load _io.StringIO)"),
    (_not_a_dict, "test_batch: data is (2, 100), expected N x 3072"),
    (_wrong_keys, "data_batch_1: not a CIFAR python batch of this dataset"),
    (lambda root: (root / "data_batch_5").unlink(), "neither cifar10's python batches (data_batch_5 missing)"),
])
def test_broken_python_batches_are_one_line_errors(damage, message: str, tmp_path: Path, capsys) -> None:
    cifar10_python(tmp_path / "src")
    damage(tmp_path / "src")
    assert main(["import", "cifar10", str(tmp_path / "src"), str(tmp_path / "png")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "png").exists() and not list(tmp_path.glob(".png.tmp-*"))


def test_truncated_or_foreign_binary_files_are_one_line_errors(tmp_path: Path) -> None:
    cifar10_binary(tmp_path / "src")
    raw = (tmp_path / "src" / "test_batch.bin").read_bytes()
    (tmp_path / "src" / "test_batch.bin").write_bytes(raw[:-10])
    with pytest.raises(UserError, match=r"test_batch.bin: 9209 bytes is not a whole number of 3073-byte"):
        cifar.load("cifar10", tmp_path / "src")
    cifar100_binary(tmp_path / "c100")
    for name in ("train.bin", "test.bin"):  # CIFAR-100's files under CIFAR-10's names: 3074-byte records
        (tmp_path / "c100" / name).rename(tmp_path / "c100" / ("data_batch_1.bin" if name == "train.bin"
                                                              else "test_batch.bin"))
    for k in range(2, 6):
        (tmp_path / "c100" / f"data_batch_{k}.bin").write_bytes((tmp_path / "c100" / "data_batch_1.bin").read_bytes())
    (tmp_path / "c100" / "batches.meta.txt").write_text("a\n")
    with pytest.raises(UserError, match="not a whole number of 3073-byte CIFAR records"):
        cifar.load("cifar10", tmp_path / "c100")
    with pytest.raises(UserError, match=r"not a readable \.tar\.gz archive"):
        (tmp_path / "x.tar.gz").write_bytes(b"not gzip")
        cifar.load("cifar10", tmp_path / "x.tar.gz")
