"""Fashion-MNIST importer (IDX -> PNG class folders), split limits/hold-outs, and the demo pipeline."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from squeezecaffe.cli import main
from squeezecaffe.data_tools.convert import ConvertOptions, build_lmdb
from squeezecaffe.data_tools.layouts import discover, read_labels, stratified_subset
from squeezecaffe.data_tools.mnist import CLASS_NAMES, class_folder, export_pngs, read_idx
from squeezecaffe.errors import UserError
from tests.test_cli import run


def write_idx(path: Path, array: np.ndarray) -> Path:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))
    return path


def fashion_like(root: Path, train_per_class: int = 12, test_per_class: int = 3) -> Path:
    """IDX files of 28x28 images whose class is a bright horizontal band at a class-specific height."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for per_class, stem in ((train_per_class, "train"), (test_per_class, "t10k")):
        labels = np.tile(np.arange(10), per_class)
        images = rng.integers(0, 50, (len(labels), 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 + 2 * label : 5 + 2 * label, 3:25] = 230
        write_idx(root / f"{stem}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{stem}-labels-idx1-ubyte.gz", labels)
    return root


def test_export_writes_png_class_folders_with_exact_pixels_and_names(tmp_path: Path):
    src = fashion_like(tmp_path / "idx")
    info = export_pngs(tmp_path / "png", src, jobs=1)
    assert info["train"] == 120 and info["test"] == 30
    images = read_idx(src / "train-images-idx3-ubyte.gz")
    labels = read_idx(src / "train-labels-idx1-ubyte.gz")
    for i in (0, 7, 119):
        png = tmp_path / "png" / "train" / class_folder(int(labels[i])) / f"{i:05d}.png"
        np.testing.assert_array_equal(cv2.imread(str(png), cv2.IMREAD_UNCHANGED), images[i])
    folders = sorted(p.name for p in (tmp_path / "png" / "test").iterdir())
    assert folders == [class_folder(i) for i in range(10)]  # sorted order == label order
    dataset = discover(tmp_path / "png")
    assert [dataset.class_words[c] for c in dataset.class_ids] == list(CLASS_NAMES)
    assert not list(tmp_path.glob(".png.tmp-*"))
    # a finished export is reused, an unfinished folder is not overwritten
    (tmp_path / "png" / "train" / class_folder(0) / "00000.png").unlink()
    export_pngs(tmp_path / "png", src)
    assert not (tmp_path / "png" / "train" / class_folder(0) / "00000.png").exists()
    (tmp_path / "half").mkdir()
    with pytest.raises(UserError, match="not a finished fashion-mnist export"):
        export_pngs(tmp_path / "half", src)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b"\x01" + b[1:], "bad magic number"),
    (lambda b: b[:-5], "needs"),
    (lambda b: b[:2] + b"\x0d" + b[3:], "element type 0x0d"),
])
def test_bad_idx_files_are_one_line_errors(tmp_path: Path, damage, message):
    raw = struct.pack(">BBBBII", 0, 0, 8, 2, 3, 4) + bytes(12)
    path = tmp_path / "x-idx2-ubyte"
    path.write_bytes(damage(raw))
    with pytest.raises(UserError, match=message):
        read_idx(path)


def test_missing_idx_files_name_the_file(tmp_path: Path, capsys):
    code, _, err = run(capsys, "import-fashion-mnist", str(tmp_path / "out"), "--src", str(tmp_path))
    assert code == 2 and "train-images-idx3-ubyte.gz: Fashion-MNIST file not found" in err
    assert not (tmp_path / "out").exists()


def test_limits_are_stratified_seeded_subsets_and_val_is_held_out_of_split_folders(tmp_path: Path):
    items = [(f"{c}/{i}.png", c) for c in range(3) for i in range(10 * (c + 1))]  # 10, 20, 30 per class
    subset = stratified_subset(items, 30, seed=1)
    assert len(subset) == 30 and [sum(1 for _, c in subset if c == k) for k in range(3)] == [5, 10, 15]
    assert subset == stratified_subset(items, 30, seed=1) != stratified_subset(items, 30, seed=2)
    assert subset == sorted(subset, key=items.index)  # original order kept

    export_pngs(tmp_path / "png", fashion_like(tmp_path / "idx"), jobs=1)
    manifest, _ = build_lmdb(tmp_path / "png", tmp_path / "data", ConvertOptions(jobs=1, progress=False, shuffle="all",
                             gray=True), val_fraction=0.25, limits={"train": 40})
    assert {s: v["count"] for s, v in manifest.splits.items()} == {"train": 40, "val": 30, "test": 30}
    assert manifest.channels == 1 and (manifest.height, manifest.width) == (28, 28)
    assert [c.name for c in read_labels(tmp_path / "data" / "labels.txt")] == list(CLASS_NAMES)
    with pytest.raises(UserError, match="already has a val split"):
        discover(_with_val(tmp_path), val_fraction=0.1)


def _with_val(tmp_path: Path) -> Path:
    root = tmp_path / "with_val"
    for split in ("train", "val"):
        (root / split / "a").mkdir(parents=True)
        cv2.imwrite(str(root / split / "a" / "x.png"), np.zeros((4, 4), np.uint8))
    return root


def test_bad_limit_is_one_line(tmp_path: Path, capsys):
    code, _, err = run(capsys, "build-lmdb", str(tmp_path), str(tmp_path / "o"), "--limit", "train=lots")
    assert code == 2 and "--limit 'train=lots'" in err


@pytest.mark.slow
def test_demo_runs_every_step_and_reports_test_accuracy(tmp_path: Path, capsys):
    src = fashion_like(tmp_path / "idx", train_per_class=16, test_per_class=4)
    code, out, err = run(capsys, "demo", "--src", str(src), "--out", str(tmp_path / "demo"), "--model", "original8",
                         "--epochs", "2", "--train-images", "120", "--val-images", "20", "--batch-size", "16",
                         "--quiet")
    assert code == 0, err
    for verb in ("import-fashion-mnist", "build-lmdb", "train original8", "eval", "report"):
        assert f"$ squeezecaffe {verb}" in out
    run_dir = tmp_path / "demo" / "runs" / "original8-short-custom"
    metrics = json.loads((run_dir / "eval" / "test" / "metrics.json").read_text())
    assert metrics["count"] == 40 and metrics["per_class"][9]["name"] == "Ankle boot"
    report = (tmp_path / "demo" / "report-short-custom.md").read_text()
    assert f"| {100 * metrics['top1']:.2f} |" in report and "original8" in report
    assert f"test top-1 {100 * metrics['top1']:.2f}%" in out
    # a re-run reuses the PNG tree and the data directory
    code, out, err = run(capsys, "demo", "--src", str(src), "--out", str(tmp_path / "demo"), "--model", "original8",
                         "--epochs", "1", "--train-images", "120", "--val-images", "20", "--batch-size", "16",
                         "--quiet")
    assert code == 0, err
    assert "already there" in out and "already built with these options" in out


def test_default_data_builds_once_shuffled_with_a_validation_split(tmp_path: Path, capsys):
    src = fashion_like(tmp_path / "idx", train_per_class=20)
    out = tmp_path / "data" / "fashion-mnist"
    assert main(["default-data", str(out), "--src", str(src), "--quiet"]) == 0
    assert "built:" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == 10 and manifest["options"]["shuffle"] == "train"
    assert {s: v["count"] for s, v in manifest["splits"].items()} == {"train": 190, "val": 10, "test": 30}
    assert main(["default-data", str(out), "--src", str(src), "--quiet"]) == 0
    assert "already built" in capsys.readouterr().out


def test_a_bad_demo_device_is_refused_before_any_data_step(tmp_path: Path, capsys):
    code, out, err = run(capsys, "demo", "--out", str(tmp_path / "demo"), "--device", "cuda:x")
    assert code == 2 and "--device cuda:x: not a device" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "demo").exists() and out == ""
