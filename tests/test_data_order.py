"""Record order: build-lmdb shuffles the training split by default, and train refuses a database in label order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest

from squeezecaffe.cli import main
from squeezecaffe.data_tools.lmdb_io import LmdbReader
from squeezecaffe.data_tools.order import label_order
from squeezecaffe.proto import pb
from tests.conftest import TRAIN
from tests.datasets import write_class_folders
from tests.test_cli import run


def _labels(db: Path) -> list[int]:
    with LmdbReader(db) as reader:
        return [int(reader.datum(i).label) for i in range(len(reader))]


def _caffe_style_db(path: Path, labels: list[int]) -> Path:
    """Datums written with nothing but lmdb + protobuf, keyed as convert_imageset keys them."""
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i, label in enumerate(labels):
            datum = pb.Datum(channels=1, height=2, width=2, data=bytes(4), label=label)
            txn.put(f"{i:08d}_img{i}.png".encode(), datum.SerializeToString())
    env.close()
    return path


def test_build_lmdb_shuffles_train_by_default_and_keep_order_keeps_it(tmp_path: Path) -> None:
    src = write_class_folders(tmp_path / "cf", classes=4, per_class=30)
    assert main(["build-lmdb", str(src), str(tmp_path / "shuffled"), "--quiet", "--val-fraction", "0.2"]) == 0
    assert main(["build-lmdb", str(src), str(tmp_path / "kept"), "--quiet", "--val-fraction", "0.2",
                 "--keep-order"]) == 0
    shuffled, kept = _labels(tmp_path / "shuffled" / "train_lmdb"), _labels(tmp_path / "kept" / "train_lmdb")
    assert kept == sorted(kept) and shuffled != sorted(shuffled) and sorted(shuffled) == kept
    assert _labels(tmp_path / "shuffled" / "val_lmdb") == sorted(_labels(tmp_path / "shuffled" / "val_lmdb"))
    options = json.loads((tmp_path / "shuffled" / "manifest.json").read_text())["options"]
    assert options["shuffle"] == "train" and options["seed"] == 0
    assert json.loads((tmp_path / "kept" / "manifest.json").read_text())["options"]["shuffle"] == "none"
    assert not label_order(tmp_path / "shuffled" / "train_lmdb").looks_sorted
    assert label_order(tmp_path / "kept" / "train_lmdb").looks_sorted


@pytest.mark.parametrize("labels, sorted_", [
    ([c for c in range(10) for _ in range(600)], True),  # 6,000 records class by class: windows of one label
    ([c for c in range(200) for _ in range(5)], True),  # many small classes: runs of 5 are still label order
    ([(i * 7919) % 10 for i in range(6000)], False),  # well mixed
    ([0] * 5990 + list(range(1, 11)), False),  # one class holds 99.8%: the sample cannot tell, so no complaint
    ([i % 2 for i in range(100)], False),  # small, alternating
])
def test_label_order_on_any_lmdb(labels: list[int], sorted_: bool, tmp_path: Path) -> None:
    order = label_order(_caffe_style_db(tmp_path / "db", labels))
    assert order.looks_sorted is sorted_, order
    assert order.records == len(labels)


def test_train_refuses_a_class_sorted_database_unless_allowed(tmp_path: Path, capsys, no_caffe) -> None:
    src = write_class_folders(tmp_path / "cf", classes=4, per_class=24)
    data = tmp_path / "sorted"
    assert main(["build-lmdb", str(src), str(data), "--quiet", "--val-fraction", "0.25", "--keep-order"]) == 0
    argv = [*TRAIN, "--epochs", "1", "--data", str(data)]
    code, _, err = run(capsys, *argv, "--run-dir", str(tmp_path / "r1"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "train_lmdb: the records are in label order" in err and "--allow-sorted" in err
    assert not list((tmp_path / "r1").glob("snapshots/*.caffemodel"))
    code, _, err = run(capsys, *argv, "--run-dir", str(tmp_path / "r2"), "--allow-sorted")
    assert code == 0, err


def test_a_run_directory_takes_one_training_process_at_a_time(data: Path, tmp_path: Path, capsys, no_caffe) -> None:
    """A live holder is named; a lock left by a killed process does not block (the kernel drops the flock)."""
    from squeezecaffe.train.rundir import RunLock

    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
                               "from squeezecaffe.train.rundir import RunLock\n"
                               f"RunLock(Path({str(run_dir)!r})).acquire()\nprint('held', flush=True)\n"
                               "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = run(capsys, *TRAIN, "--epochs", "1", "--data", str(data), "--run-dir", str(run_dir))
        assert code == 2 and f"another training process (pid {holder.pid})" in err
        assert len(err.strip().splitlines()) == 1 and not (run_dir / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(run_dir):  # free again once the holder is gone (SIGKILL: nothing cleaned up the file)
        assert (run_dir / ".lock").read_text().strip() == str(os.getpid())
    code, _, err = run(capsys, *TRAIN, "--epochs", "1", "--data", str(data), "--run-dir", str(run_dir))
    assert code == 0, err
