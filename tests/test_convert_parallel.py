"""The converter's workers: any number of them writes the same database as one process does,
their failures end the command cleanly, and what they sum for the mean is Caffe's mean."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import squeezecaffe.data_tools.convert as convert
import squeezecaffe.data_tools.lmdb_io as lmdb_io
import squeezecaffe.data_tools.parallel_write as parallel_write
from squeezecaffe.data_tools.convert import ConvertOptions, build_lmdb
from squeezecaffe.data_tools.decode import raw_datum_bytes
from squeezecaffe.data_tools.image_files import images_under
from squeezecaffe.data_tools.lmdb_io import LmdbReader
from squeezecaffe.data_tools.mean import EXACT_FLOAT32_TOTAL, compute_mean, mean_from_pixel_sums
from squeezecaffe.errors import UserError
from squeezecaffe.proto import pb
from tests.datasets import pattern_image, write_class_folders
from tests.processes import kill, stop_when
from tests.test_data_tools import records


def quiet(**kw) -> ConvertOptions:
    return ConvertOptions(progress=False, **kw)


def build(src: Path, out: Path, **kw) -> tuple[dict, list[tuple[bytes, bytes]], bytes]:
    manifest, _ = build_lmdb(src, out, quiet(**kw), val_fraction=0)
    mean = out / "mean.binaryproto"  # none for encoded images of several sizes
    return manifest.splits["train"], records(out / "train_lmdb"), mean.read_bytes() if mean.exists() else b""


def mixed_folder(root: Path) -> Path:
    """Class folders with broken files and odd-sized images spread over many small chunks."""
    src = write_class_folders(root, classes=3, per_class=40, size=(16, 16), ext=".png")
    cv2.imwrite(str(src / "class_1" / "odd_size.png"), pattern_image(1, 999, (20, 16)))
    (src / "class_2" / "broken.png").write_bytes(b"not a png")
    (src / "class_0" / "empty.png").write_bytes(b"")
    return src


def test_raw_datum_bytes_are_protobufs_serialization() -> None:
    rng = np.random.default_rng(0)
    for shape, label in [((4, 5, 3), 7), ((300, 2, 3), 123456), ((3, 3), 0), ((1, 129), 2**31 - 1), ((2, 2, 3), -1)]:
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        chw = img[None] if img.ndim == 2 else img.transpose(2, 0, 1)
        expect = pb.Datum(channels=chw.shape[0], height=chw.shape[1], width=chw.shape[2],
                          data=np.ascontiguousarray(chw).tobytes(), label=label, encoded=False)
        assert raw_datum_bytes(img, label) == expect.SerializeToString(), (shape, label)


@pytest.mark.parametrize("flags", [{}, {"gray": True}, {"resize": (8, 8)}, {"encoded": True}, {"shuffle": "all"},
                                   {"shuffle": "none"}])
def test_any_number_of_workers_writes_the_one_process_database(flags, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(parallel_write, "CHUNK", 8)  # forked workers inherit it: 15 chunks, quarter chunks at the end
    src = mixed_folder(tmp_path / "cf")
    one = build(src, tmp_path / "one", jobs=1, max_skip=0.05, **flags)
    for jobs in (2, 3):
        many = build(src, tmp_path / f"jobs{jobs}", jobs=jobs, max_skip=0.05, **flags)
        assert many[1] == one[1]  # every key and value, in order
        assert many[0] == one[0]  # counts, skipped, bytes, key-list checksum
        assert many[2] == one[2]  # mean file
        skipped = (tmp_path / f"jobs{jobs}" / "skipped.txt").read_text()
        assert skipped == (tmp_path / "one" / "skipped.txt").read_text()
    expect_skipped = 2 if flags.get("resize") or flags.get("encoded") else 3  # the odd size counts only for raw
    assert (one[0]["skipped"], one[0]["count"]) == (expect_skipped, 123 - expect_skipped)


def test_worker_sums_give_compute_image_means_bytes(tmp_path: Path) -> None:
    src = write_class_folders(tmp_path / "cf", classes=2, per_class=30, size=(12, 10), ext=".png")
    for jobs in (1, 2):
        out = tmp_path / f"j{jobs}"
        build_lmdb(src, out, quiet(jobs=jobs), val_fraction=0)
        blob, per_channel, count = compute_mean(out / "train_lmdb")  # the database read back, as Caffe does
        assert count == 60
        assert (out / "mean.binaryproto").read_bytes() == blob.SerializeToString()
        saved = json.loads((out / "mean.json").read_text())
        assert (saved["mean_values_bgr"], saved["images"]) == (per_channel, 60)


def test_exact_sums_only_below_two_to_the_24() -> None:
    sums = np.full((2, 2, 3), EXACT_FLOAT32_TOTAL, np.uint64)
    blob, _ = mean_from_pixel_sums(sums, 65_793)
    assert np.asarray(blob.data, np.float32)[0] == np.float32(EXACT_FLOAT32_TOTAL) / np.float32(65_793)
    assert (blob.channels, blob.height, blob.width) == (3, 2, 2)
    sums[1, 1, 2] += 1  # 2^24 + 1 is no float32: Caffe's order-dependent rounding would begin here
    assert mean_from_pixel_sums(sums, 65_794) is None
    gray = mean_from_pixel_sums(np.arange(6, dtype=np.uint64).reshape(2, 3), 1)[0]
    assert (gray.channels, gray.height, gray.width) == (1, 2, 3)
    assert list(gray.data) == [0, 1, 2, 3, 4, 5]


def test_past_two_to_the_24_the_mean_is_read_back_from_the_database(tmp_path: Path, monkeypatch) -> None:
    src = write_class_folders(tmp_path / "cf", classes=2, per_class=5, size=(8, 8), ext=".png")
    monkeypatch.setattr("squeezecaffe.data_tools.mean.EXACT_FLOAT32_TOTAL", 100)  # every total is over it now
    read_back = []
    original = convert.write_mean
    monkeypatch.setattr(convert, "write_mean", lambda *a: read_back.append(a) or original(*a))
    build_lmdb(src, tmp_path / "out", quiet(jobs=2), val_fraction=0)
    assert read_back, "the mean must come from the database when the sums are not exact in float32"
    blob, _, _ = compute_mean(tmp_path / "out" / "train_lmdb")
    assert (tmp_path / "out" / "mean.binaryproto").read_bytes() == blob.SerializeToString()


def test_workers_grow_the_map_for_each_other(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(lmdb_io, "INITIAL_MAP_SIZE", 1 << 18)
    monkeypatch.setattr(parallel_write, "INITIAL_MAP_SIZE", 1 << 18)
    monkeypatch.setattr(parallel_write, "CHUNK", 16)
    src = write_class_folders(tmp_path / "cf", classes=2, per_class=100, size=(32, 32), ext=".png")  # 600 KiB
    one = build(src, tmp_path / "one", jobs=1)
    two = build(src, tmp_path / "two", jobs=2)
    assert two[1] == one[1] and len(two[1]) == 200


REAL_MAKE_DATUM = parallel_write.make_datum


def _fail_on(name: str, how):
    def make_datum(path, label, opts):
        if path.as_posix().endswith(name):
            how()
        return REAL_MAKE_DATUM(path, label, opts)
    return make_datum


def _leftovers(out: Path) -> list[str]:
    return [p.name for p in out.iterdir() if ".tmp-" in p.name or p.name == "train_lmdb"] if out.exists() else []


def test_a_failing_worker_stops_the_command_and_leaves_no_database(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(parallel_write, "CHUNK", 8)
    src = write_class_folders(tmp_path / "cf", classes=2, per_class=40, size=(8, 8), ext=".png")

    def boom():
        raise ValueError("decoder exploded")
    monkeypatch.setattr(parallel_write, "make_datum", _fail_on("class_1/img_30.png", boom))
    with pytest.raises(RuntimeError, match=r"converter worker build-lmdb-\d failed: ValueError: decoder exploded"):
        build_lmdb(src, tmp_path / "out", quiet(jobs=2), val_fraction=0)
    assert _leftovers(tmp_path / "out") == []

    monkeypatch.setattr(parallel_write, "make_datum", _fail_on("class_0/img_5.png", lambda: os._exit(3)))
    with pytest.raises(UserError, match=r"died \(exit code 3\) while writing .*; nothing was kept$"):
        build_lmdb(src, tmp_path / "out", quiet(jobs=2), val_fraction=0)
    assert _leftovers(tmp_path / "out") == []

    monkeypatch.setattr(parallel_write, "make_datum", _fail_on("class_1/img_7.png", lambda: os.kill(os.getpid(), 9)))
    with pytest.raises(UserError, match=r"died \(killed by signal 9\)"):  # as the out-of-memory killer does
        build_lmdb(src, tmp_path / "out", quiet(jobs=2), val_fraction=0)
    assert _leftovers(tmp_path / "out") == []

    def disk_full():
        import lmdb

        raise lmdb.DiskError("No space left on device")
    monkeypatch.setattr(parallel_write, "make_datum", _fail_on("class_1/img_2.png", disk_full))
    with pytest.raises(UserError, match=r"\.train_lmdb\.tmp-\w+: writing the database failed: No space left"):
        build_lmdb(src, tmp_path / "out", quiet(jobs=2), val_fraction=0)
    assert _leftovers(tmp_path / "out") == []


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc to list a process's children")
@pytest.mark.slow
def test_workers_exit_when_the_parent_is_killed(tmp_path: Path) -> None:
    src = write_class_folders(tmp_path / "cf", classes=4, per_class=1500, size=(32, 32), ext=".jpg")
    out = tmp_path / "data"
    cmd = [sys.executable, "-m", "squeezecaffe", "build-lmdb", str(src), str(out), "--quiet", "--jobs", "2",
           "--val-fraction", "0"]
    proc = subprocess.Popen(cmd)
    workers: list[int] = []

    def both_workers_started() -> bool:
        workers[:] = _children(proc.pid)
        return len(workers) == 2

    assert stop_when(proc, both_workers_started), "the converter finished before its workers could be seen"
    kill(proc)
    # the workers notice their parent's death and exit: wait for that event (bounded), then require it
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(Path(f"/proc/{w}").exists() and _state(w) != "Z" for w in workers):
        time.sleep(0.05)
    assert all(not Path(f"/proc/{w}").exists() or _state(w) == "Z" for w in workers), "orphaned workers kept writing"
    assert not (out / "train_lmdb").exists()
    subprocess.run(cmd, check=True)  # a rerun drops the killed run's temporary and completes
    with LmdbReader(out / "train_lmdb") as reader:
        assert len(reader) == 6000


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"


def test_listing_follows_path_order(tmp_path: Path) -> None:
    root = tmp_path / "r"
    names = ["a b/x.jpg", "a/x.jpg", "a/y/z.PNG", "a.jpg", "a-b.JPEG", "b/..jpg", "b/.jpg", "b/c.txt", "b/d.jpg/e.bmp",
             "é/ü.png", "B/k.jpg"]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    (root / "link").symlink_to(root / "a", target_is_directory=True)  # not followed, as rglob
    (root / "f.jpg").symlink_to(root / "a.jpg")  # followed: a file
    expect = sorted(p for p in root.rglob("*")
                    if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp"} and p.is_file() and p.name[0] != ".")
    ignored: dict[str, int] = {}
    assert images_under(root, root, ignored) == [p.relative_to(root).as_posix() for p in expect]
    assert ignored == {"hidden": 2, ".txt": 1}  # b/..jpg and b/.jpg are dot files; the symlinked folder is no file
    assert images_under(root / "a", root, {}) == ["a/x.jpg", "a/y/z.PNG"]


def test_reports_that_cross_are_taken_in_chunk_order() -> None:
    """Workers report after writing, so chunk 1's report may come before chunk 0's."""
    from tqdm import tqdm

    def collected(order: list[int]) -> tuple:
        collect = parallel_write.Collector(tqdm(disable=True))
        messages = [("chunk", 0, 2, [b"k0", b"k1"], [("a.png", "broken")], 10, [(3, 4, 4), (3, 6, 6)]),
                    ("chunk", 1, 2, [b"k2"], [("b.png", "empty")], 5, [(3, 8, 8)])]
        for i in order:
            collect(messages[i])
        return (collect.keys.hexdigest(), collect.skipped, collect.shape, collect.count, collect.bytes,
                sorted(collect.shapes))

    assert collected([1, 0]) == collected([0, 1])
    assert collected([1, 0])[1:] == ([("a.png", "broken"), ("b.png", "empty")], (3, 4, 4), 3, 15,
                                     [(3, 4, 4), (3, 6, 6), (3, 8, 8)])
