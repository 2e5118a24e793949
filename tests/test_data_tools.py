"""build-lmdb, mean, inspect and the reader: against real Caffe's tools and against bad input."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest
from PIL import Image

from squeezecaffe.cli import main
from squeezecaffe.data_tools.convert import ConvertOptions, build_lmdb
from squeezecaffe.data_tools.layouts import discover
from squeezecaffe.data_tools.lmdb_io import LmdbReader
from squeezecaffe.data_tools.manifest import read_manifest
from squeezecaffe.errors import UserError
from squeezecaffe.proto import pb, read_text
from tests.conftest import FIXTURES
from tests.datasets import pattern_image, write_class_folders, write_tiny_imagenet
from tests.processes import kill, stop_when

CAFFE_LMDB = FIXTURES / "lmdb"


def records(db: Path) -> list[tuple[bytes, bytes]]:
    env = lmdb.open(str(db), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return list(txn.cursor())
    finally:
        env.close()


def quiet(**kw) -> ConvertOptions:
    return ConvertOptions(progress=False, **kw)


@pytest.mark.parametrize("mode, flags", [("raw", []), ("resized", ["--resize", "12x12"]), ("encoded", ["--encoded"]),
                                         ("gray", ["--gray"])])
def test_equals_convert_imageset_record_for_record(mode, flags, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code = main(["build-lmdb", str(CAFFE_LMDB / "list.txt"), str(out), "--val-fraction", "0", "--root",
                 str(CAFFE_LMDB / "images"),
                 "--splits", "train", "--quiet", "--keep-order", *flags])
    assert code == 0, capsys.readouterr().err
    assert records(out / "train_lmdb") == records(CAFFE_LMDB / f"{mode}_lmdb")


def test_mean_equals_compute_image_mean_byte_for_byte(tmp_path: Path, capsys) -> None:
    assert main(["mean", str(CAFFE_LMDB / "raw_lmdb"), "-o", str(tmp_path / "m.binaryproto")]) == 0
    assert (tmp_path / "m.binaryproto").read_bytes() == (CAFFE_LMDB / "raw_mean.binaryproto").read_bytes()
    values = json.loads((tmp_path / "m.json").read_text())["mean_values_bgr"]
    blob = pb.BlobProto()
    blob.ParseFromString((CAFFE_LMDB / "raw_mean.binaryproto").read_bytes())
    expect = np.asarray(blob.data, np.float64).reshape(3, -1).mean(axis=1)
    assert values == pytest.approx(expect.tolist(), rel=1e-9)
    assert "mean_value (BGR)" in capsys.readouterr().out


def test_tiny_imagenet_layout_pixels_and_labels(tmp_path: Path) -> None:
    src = write_tiny_imagenet(tmp_path / "tiny")
    out = tmp_path / "data"
    manifest, results = build_lmdb(src, out, quiet(jobs=2, shuffle="none"), val_fraction=0)  # listing order, to check the keys
    assert manifest.classes == 3 and (manifest.height, manifest.width) == (64, 64)
    assert {r.name: r.count for r in results} == {"train": 12, "val": 6, "test": 2}
    ds = discover(src)
    assert ds.class_ids == sorted(ds.class_ids)
    labels = (out / "labels.txt").read_text().splitlines()
    assert labels[0] == f"0\t{ds.class_ids[0]}\tthing 0, object 0"
    plain = records(out / "train_lmdb")
    reader = LmdbReader(out / "train_lmdb")
    for i, (key, value) in enumerate(plain):
        rel, label = ds.splits["train"][i]
        assert key == f"{i:08d}_{rel}".encode()
        datum = pb.Datum()
        datum.ParseFromString(value)
        expect = cv2.imread(str(src / rel), cv2.IMREAD_COLOR).transpose(2, 0, 1)
        img, got_label = reader[i]
        assert got_label == label == datum.label
        np.testing.assert_array_equal(img, expect)
        np.testing.assert_array_equal(np.frombuffer(datum.data, np.uint8).reshape(3, 64, 64), expect)
    val_labels = [label for _, label in LmdbReader(out / "val_lmdb")]
    assert sorted(val_labels) == [0, 0, 1, 1, 2, 2]
    assert read_manifest(out).splits["test"]["labelled"] is False


def test_class_folders_stratified_split_and_shuffle(tmp_path: Path) -> None:
    src = write_class_folders(tmp_path / "cf", classes=3, per_class=10)
    out = tmp_path / "data"
    manifest, _ = build_lmdb(src, out, quiet(shuffle="all", seed=3), val_fraction=0.2)
    assert manifest.split_count("train") == 24 and manifest.split_count("val") == 6
    val_labels = sorted(label for _, label in LmdbReader(out / "val_lmdb"))
    assert val_labels == [0, 0, 1, 1, 2, 2]
    keys = [k for k, _ in records(out / "train_lmdb")]
    paths = [k.decode().split("_", 1)[1] for k in keys]
    assert paths != sorted(paths)  # shuffled
    again = tmp_path / "again"
    build_lmdb(src, again, quiet(shuffle="all", seed=3), val_fraction=0.2)
    assert records(again / "train_lmdb") == records(out / "train_lmdb")  # seeded


def test_unusual_images_convert_and_broken_ones_are_skipped(tmp_path: Path) -> None:
    root = tmp_path / "imgs" / "a b ü"  # spaces and unicode in paths
    root.mkdir(parents=True)
    base = pattern_image(1, 1, (16, 16))
    cv2.imwrite(str(root / "gray.png"), cv2.cvtColor(base, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(root / "alpha.png"), np.dstack([base, base[:, :, 0]]))
    cv2.imwrite(str(root / "deep.png"), base.astype(np.uint16) * 257)
    buf = io.BytesIO()
    Image.fromarray(base[:, :, ::-1]).convert("CMYK").save(buf, "JPEG")
    (root / "cmyk.jpg").write_bytes(buf.getvalue())
    cv2.imwrite(str(root / "ok.jpg"), base)
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.JPEG").write_text("this is not an image")
    jpg = (root / "ok.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(jpg[: len(jpg) * 2 // 3])
    cv2.imwrite(str(root / "big.png"), pattern_image(1, 2, (20, 20)))
    out = tmp_path / "data"
    with pytest.raises(UserError, match="4 of 9 images failed"):
        build_lmdb(tmp_path / "imgs", out, quiet(), val_fraction=0)
    assert not (out / "train_lmdb").exists() and not (out / "manifest.json").exists()
    _, results = build_lmdb(tmp_path / "imgs", out, quiet(max_skip=0.5), val_fraction=0)
    assert results[0].count == 5
    skipped = dict(line.split("\t")[1:] for line in (out / "skipped.txt").read_text().splitlines())
    assert skipped["a b ü/zero.jpg"] == "empty file (0 bytes)"
    assert skipped["a b ü/text.JPEG"] == "not a decodable image"
    assert "truncated" in skipped["a b ü/truncated.jpg"]
    assert "differs from the database's 16x16; use --resize" in skipped["a b ü/big.png"]
    with LmdbReader(out / "train_lmdb") as reader:
        assert all(img.shape == (3, 16, 16) for img, _ in reader)
    # Every converted pixel is what cv2.imread(IMREAD_COLOR) gives for that file.
    for key, value in records(out / "train_lmdb"):
        rel = key.decode().split("_", 1)[1]
        datum = pb.Datum()
        datum.ParseFromString(value)
        expect = cv2.imread(str(tmp_path / "imgs" / rel), cv2.IMREAD_COLOR).transpose(2, 0, 1)
        np.testing.assert_array_equal(np.frombuffer(datum.data, np.uint8).reshape(expect.shape), expect)
    gray_out = tmp_path / "gray"
    build_lmdb(tmp_path / "imgs", gray_out, quiet(max_skip=0.5, gray=True, resize=(8, 8)), val_fraction=0)
    assert {img.shape for img, _ in LmdbReader(gray_out / "train_lmdb")} == {(1, 8, 8)}


def test_list_file_errors_name_the_line(tmp_path: Path) -> None:
    (tmp_path / "img.png").write_bytes(cv2.imencode(".png", pattern_image(0, 0, (8, 8)))[1].tobytes())
    bad_label = tmp_path / "a.txt"
    bad_label.write_text("img.png 0\nimg.png one\n")
    with pytest.raises(UserError, match=r"a.txt:2: label 'one' is not an integer"):
        build_lmdb(bad_label, tmp_path / "o1", quiet(), val_fraction=0)
    out_of_range = tmp_path / "b.txt"
    out_of_range.write_text("img.png 0\nimg.png 5\n")
    with pytest.raises(UserError, match=r"b.txt:2: label 5 is outside the class range 0..2"):
        build_lmdb(out_of_range, tmp_path / "o2", quiet(), classes=3, val_fraction=0)
    missing = tmp_path / "c.txt"
    missing.write_text("".join("img.png 0\n" for _ in range(20)) + "nope.png 1\n")
    _, results = build_lmdb(missing, tmp_path / "o3", quiet(max_skip=0.1), val_fraction=0)
    assert results[0].count == 20 and results[0].skipped == [("nope.png", "file not found")]


def test_class_folders_take_every_format_opencv_reads_and_say_what_they_passed_over(tmp_path: Path, capsys) -> None:
    """TIFF, WebP, PxM and upper-case suffixes are images; macOS's `._x.jpg` companions, `__MACOSX/`, hidden folders
    and other files are passed over and counted, not failed on and not silently dropped. Encoded, the formats beyond
    JPEG/PNG/BMP are stored as PNG of the same pixels."""
    src = tmp_path / "src"
    formats = (".TIF", ".webp", ".ppm", ".png", ".JPG")
    for c in range(2):
        folder = src / f"class_{c}"
        (folder / ".ipynb_checkpoints").mkdir(parents=True)
        for i, ext in enumerate(formats):
            cv2.imwrite(str(folder / f"img_{i}{ext}"), pattern_image(c, i, (16, 16)))
        (folder / "._img_0.JPG").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
        (folder / ".ipynb_checkpoints" / "img_9.png").write_bytes(b"not an image")
        (folder / "notes.txt").write_text("taken on a Tuesday")
        Image.fromarray(pattern_image(c, 9, (16, 16))).save(folder / "anim.gif")
    (src / "__MACOSX" / "class_0").mkdir(parents=True)
    (src / "__MACOSX" / "class_0" / "._img_1.webp").write_bytes(b"\x00\x05\x16\x07")
    assert main(["build-lmdb", str(src), str(tmp_path / "o"), "--val-fraction", "0", "--quiet", "--encoded"]) == 0
    out = capsys.readouterr().out
    assert f"{src}: passed over .gif 2, .txt 2, hidden 2 (not images" in out
    manifest = read_manifest(tmp_path / "o")
    assert manifest.classes == 2 and manifest.splits["train"]["count"] == 10 and manifest.splits["train"]["skipped"] == 0
    assert manifest.options["ignored"] == {".gif": 2, ".txt": 2, "hidden": 2}
    stored = {}
    for key, value in records(tmp_path / "o" / "train_lmdb"):
        datum = pb.Datum.FromString(value)
        name = key.decode().split("_", 1)[1]
        stored[name] = datum.data
        c, i = int(name.split("/")[0][-1]), int(name.split("_")[-1].split(".")[0])
        pixels = cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_COLOR)
        if not name.lower().endswith((".jpg", ".webp")):  # the lossy formats aside, the pixels are the source's
            assert np.array_equal(pixels, pattern_image(c, i, (16, 16))), name
    assert stored["class_0/img_0.TIF"][:4] == stored["class_1/img_1.webp"][:4] == b"\x89PNG"
    assert stored["class_0/img_4.JPG"] == (src / "class_0" / "img_4.JPG").read_bytes()  # kept as the file was


def _mixed_channel_folders(src: Path, size: tuple[int, int] = (16, 16), sizes_vary: bool = False) -> Path:
    """Per class an RGBA PNG (first in key order), a gray PNG and a colour JPEG: files of 4, 1 and 3 channels."""
    for c in range(2):
        folder = src / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(4):
            h, w = (size[0] + i, size[1]) if sizes_vary else size
            img = pattern_image(c, i, (h, w))
            cv2.imwrite(str(folder / f"a{i}.png"), cv2.cvtColor(img, cv2.COLOR_BGR2BGRA))
            cv2.imwrite(str(folder / f"b{i}.png"), cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
            cv2.imwrite(str(folder / f"c{i}.jpg"), img)
    return src


@pytest.mark.parametrize("gray, channels, flag", [(False, 3, "force_color: true"), (True, 1, "force_gray: true")])
def test_encoded_data_of_mixed_channels_is_decoded_to_the_manifests_channels(tmp_path: Path, gray: bool, channels: int,
                                                                             flag: str) -> None:
    """Caffe decodes an encoded Datum with the file's own channels unless transform_param forces them: nets for an
    encoded database force the channels build-lmdb sized them for (an RGBA PNG first would make a 4-channel net)."""
    from squeezecaffe.engines.torchcaffe.loader import DataLayerLoader

    src = _mixed_channel_folders(tmp_path / "src")
    data = tmp_path / "data"
    assert main(["build-lmdb", str(src), str(data), "--encoded", "--quiet", "--val-fraction", "0.25",
                 *(["--gray"] if gray else [])]) == 0
    assert read_manifest(data).channels == channels
    assert main(["gen", "cifar_resnet_1111", "--data", str(data), "--out", str(tmp_path / "net")]) == 0
    train_val = read_text(tmp_path / "net" / "train_val.prototxt", pb.NetParameter)
    for layer in (lp for lp in train_val.layer if lp.type == "Data"):
        assert flag in str(layer.transform_param).replace("\n", " ")
        x, _ = DataLayerLoader(layer, layer.include[0].phase, seed=1).next_batch()
        assert tuple(x.shape[1:]) == (channels, 16, 16)


@pytest.mark.caffe
@pytest.mark.parametrize("flag, channels", [("force_color: true", 3), ("force_gray: true", 1), ("", 4)])
def test_encoded_records_decode_as_real_caffes_data_layer_decodes_them(tmp_path: Path, flag: str,
                                                                       channels: int) -> None:
    """The torch engine's Data layer against real Caffe's, TEST phase, on PNG files of 4, 1 and 3 channels (PNG: both
    OpenCVs decode it to the same pixels): force_color and force_gray give the same batches, bit for bit; without a
    flag both decode each file natively (here every file RGBA: 4 channels)."""
    from squeezecaffe.engines.pycaffe.runtime import GlogTap, import_caffe
    from squeezecaffe.engines.torchcaffe.loader import DataLayerLoader

    src = tmp_path / "src"
    for c in range(2):
        (src / f"class_{c}").mkdir(parents=True)
        for i in range(3):
            img = pattern_image(c, i, (10, 12))
            variants = [cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)] if not flag else \
                [cv2.cvtColor(img, cv2.COLOR_BGR2BGRA), cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), img]
            for k, variant in enumerate(variants):
                cv2.imwrite(str(src / f"class_{c}" / f"{i}_{k}.png"), variant)
    data = tmp_path / "data"
    assert main(["build-lmdb", str(src), str(data), "--encoded", "--quiet", "--val-fraction", "0", "--keep-order"]) == 0
    net = tmp_path / "data.prototxt"
    net.write_text(f'layer {{ name: "data" type: "Data" top: "data" top: "label" transform_param {{ scale: 0.5 {flag} }}'
                   f' data_param {{ source: "{data / "train_lmdb"}" batch_size: 5 backend: LMDB }} }}')
    caffe = import_caffe()
    with GlogTap(tmp_path / "caffe.log"):
        caffe_net = caffe.Net(str(net), caffe.TEST)
        theirs = [(caffe_net.forward(), caffe_net.blobs["data"].data.copy(), caffe_net.blobs["label"].data.copy())
                  for _ in range(3)]
    layer = read_text(net, pb.NetParameter).layer[0]
    ours = DataLayerLoader(layer, pb.TEST, seed=1)
    for _, data_blob, labels in theirs:
        x, y = ours.next_batch()
        assert x.shape[1] == channels
        assert np.array_equal(x.numpy(), data_blob) and np.array_equal(y.numpy(), labels)


def test_eval_and_mean_decode_encoded_records_as_the_nets_do(tmp_path: Path, capsys) -> None:
    src = _mixed_channel_folders(tmp_path / "src")
    data = tmp_path / "data"
    assert main(["build-lmdb", str(src), str(data), "--encoded", "--quiet", "--val-fraction", "0.25"]) == 0
    assert main(["train", "cifar_resnet_1111", "--data", str(data), "--engine", "torch", "--epochs", "1",
                 "--batch-size", "6", "--run-dir", str(tmp_path / "run"), "--quiet"]) == 0
    assert main(["eval", str(tmp_path / "run"), "--split", "train"]) == 0
    metrics = json.loads((tmp_path / "run" / "eval" / "train" / "metrics.json").read_text())
    assert metrics["count"] == read_manifest(data).splits["train"]["count"] and not metrics["skipped"]
    capsys.readouterr()
    assert main(["mean", str(data / "train_lmdb"), "-o", str(tmp_path / "native.binaryproto")]) == 2
    assert "channels, earlier ones" in capsys.readouterr().err  # compute_image_mean's rule: each file's own
    assert main(["mean", str(data / "train_lmdb"), "-o", str(tmp_path / "m.binaryproto"), "--decode", "color"]) == 0
    mean = json.loads((tmp_path / "m.json").read_text())["mean_values_bgr"]
    assert mean == pytest.approx(read_manifest(data).mean_values, abs=1e-4)


@pytest.mark.parametrize("case", ["encoded-sizes-vary", "val-of-another-size"])
def test_a_net_that_takes_images_whole_refuses_images_of_several_sizes(tmp_path: Path, capsys, case: str) -> None:
    """Encoded files of several sizes (no --resize), or a val split stored at another size than train (raw records
    hold one size per split): the manifest says mixed_sizes and a net sized from train's first image is refused."""
    if case == "encoded-sizes-vary":
        src, flags = _mixed_channel_folders(tmp_path / "src", sizes_vary=True), ["--encoded"]
    else:
        src, flags = tmp_path / "src", ["--val-fraction", "0"]
        write_class_folders(src / "train", classes=2, per_class=3, size=(16, 16))
        write_class_folders(src / "val", classes=2, per_class=2, size=(20, 20))
    assert main(["build-lmdb", str(src), str(tmp_path / "data"), "--quiet", *flags]) == 0
    assert read_manifest(tmp_path / "data").mixed_sizes
    assert main(["gen", "cifar_resnet_1111", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "net")]) == 2
    err = capsys.readouterr().err
    assert "its images have several sizes" in err and "--resize HxW" in err and len(err.strip().splitlines()) == 1


@pytest.mark.caffe
def test_real_caffe_trains_on_encoded_data_of_mixed_channels(tmp_path: Path) -> None:
    """Without force_color Caffe's data layer sizes the net from the first record (4 channels) and its transform
    aborts the process on a failed CHECK (3 mean values for 4 channels): run in a child process so that a regression
    fails this test instead of killing the session."""
    src = _mixed_channel_folders(tmp_path / "src")
    assert main(["build-lmdb", str(src), str(tmp_path / "data"), "--encoded", "--quiet", "--val-fraction", "0.25"]) == 0
    run = subprocess.run([sys.executable, "-m", "squeezecaffe", "train", "cifar_resnet_1111", "--data",
                          str(tmp_path / "data"), "--engine", "caffe", "--epochs", "1", "--batch-size", "4",
                          "--run-dir", str(tmp_path / "run"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (run.stderr[-1500:], (tmp_path / "run" / "caffe.log").read_text()[-1500:])
    assert (tmp_path / "run" / "best.caffemodel").is_file()


def test_a_list_file_with_one_based_labels_is_told_that_class_0_is_empty(tmp_path: Path, capsys) -> None:
    """Windows line ends, spaces in paths, labels 1..3: four classes, the first without images, said in one note."""
    (tmp_path / "imgs").mkdir()
    lines = []
    for i in range(9):
        cv2.imwrite(str(tmp_path / "imgs" / f"im {i}.png"), pattern_image(i % 3, i, (12, 12)))
        lines.append(f"imgs/im {i}.png {1 + i % 3}")
    (tmp_path / "train.txt").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    assert main(["build-lmdb", str(tmp_path / "train.txt"), str(tmp_path / "o"), "--quiet", "--val-fraction", "0"]) == 0
    out = capsys.readouterr().out
    assert ("note: 1 of 4 classes has no training image (label 0); list-file labels are class indices from 0, "
            "so 1-based labels leave class 0 empty") in out
    manifest = read_manifest(tmp_path / "o")
    assert manifest.classes == 4 and manifest.options["empty_classes"] == [0]
    assert sorted({pb.Datum.FromString(v).label for _, v in records(tmp_path / "o" / "train_lmdb")}) == [1, 2, 3]


def test_split_folders_as_datasets_name_them(tmp_path: Path, capsys) -> None:
    """Kaggle's `valid/`, capitalised `Train/`/`Test/`: split folders, not classes; two folders for one split, or split
    folders without a train folder, are one line each."""
    src = tmp_path / "kaggle"
    for folder, per_class in (("Train", 4), ("valid", 2), ("Test", 1), ("extra", 1)):
        write_class_folders(src / folder, classes=3, per_class=per_class)
    assert main(["build-lmdb", str(src), str(tmp_path / "o"), "--quiet"]) == 0
    assert "passed over folders beside the splits 1 (not images" in capsys.readouterr().out
    manifest = read_manifest(tmp_path / "o")
    assert manifest.classes == 3 and manifest.options["val_fraction"] == 0
    assert {s: info["count"] for s, info in manifest.splits.items()} == {"train": 12, "val": 6, "test": 3}
    write_class_folders(src / "validation", classes=3, per_class=1)
    assert main(["build-lmdb", str(src), str(tmp_path / "o2"), "--quiet"]) == 2
    assert "valid and validation are both the val split; keep one" in capsys.readouterr().err
    no_train = tmp_path / "no_train"  # val/ and test/ of class folders: eval reads them, build-lmdb has no train
    write_class_folders(no_train / "val", classes=2, per_class=2)
    write_class_folders(no_train / "test", classes=3, per_class=1)
    found = discover(no_train, val_fraction=0)
    assert found.class_ids == ["class_0", "class_1", "class_2"] and set(found.splits) == {"val", "test"}
    assert main(["build-lmdb", str(no_train), str(tmp_path / "o3"), "--quiet"]) == 2
    assert "no training images found" in capsys.readouterr().err


def test_folders_named_like_splits_that_hold_images_are_classes_and_a_bare_test_folder_is_unlabelled(
        tmp_path: Path) -> None:
    """Classes Bus, Car and Train (images inside) stay three classes, and so do test/ and testing/; Kaggle's
    train/<class>/ beside test/*.jpg gives an unlabelled test split (as Tiny ImageNet's test/images)."""
    vehicles = write_class_folders(tmp_path / "vehicles", classes=3, per_class=2)
    for old, new in (("class_0", "Bus"), ("class_1", "Car"), ("class_2", "Train")):
        (vehicles / old).rename(vehicles / new)
    assert discover(vehicles, val_fraction=0).class_ids == ["Bus", "Car", "Train"]
    named = write_class_folders(tmp_path / "named", classes=2, per_class=2)
    (named / "class_0").rename(named / "test")
    (named / "class_1").rename(named / "testing")
    assert discover(named, val_fraction=0).class_ids == ["test", "testing"]
    kaggle = tmp_path / "kaggle"
    write_class_folders(kaggle / "train", classes=2, per_class=4)
    (kaggle / "test").mkdir()
    for i in range(3):
        cv2.imwrite(str(kaggle / "test" / f"{i}.png"), pattern_image(0, i, (32, 32)))
    assert main(["build-lmdb", str(kaggle), str(tmp_path / "o"), "--quiet"]) == 0
    manifest = read_manifest(tmp_path / "o")
    assert manifest.classes == 2 and manifest.splits["test"]["count"] == 3 and not manifest.splits["test"]["labelled"]
    assert manifest.splits["val"]["count"] == 2  # held out of train: the source has no val


def test_empty_class_folder_and_existing_output(tmp_path: Path, capsys) -> None:
    src = write_class_folders(tmp_path / "cf", classes=2, per_class=3)
    (src / "empty_class").mkdir()
    code = main(["build-lmdb", str(src), str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "empty_class: class folder holds no images" in err and len(err.strip().splitlines()) == 1
    (src / "empty_class").rmdir()
    assert main(["build-lmdb", str(src), str(tmp_path / "o"), "--quiet"]) == 0
    before = records(tmp_path / "o" / "train_lmdb")
    code = main(["build-lmdb", str(src), str(tmp_path / "o"), "--quiet"])
    assert code == 2 and "already exists there; pass --force" in capsys.readouterr().err
    assert records(tmp_path / "o" / "train_lmdb") == before
    assert main(["build-lmdb", str(src), str(tmp_path / "o"), "--quiet", "--force", "--resize", "8x8"]) == 0
    assert LmdbReader(tmp_path / "o" / "train_lmdb")[0][0].shape == (3, 8, 8)


def _kill_when_writing(cmd: list[str], out: Path) -> bool:
    """Start the converter, SIGKILL it while its temporary database exists (seen with the converter stopped, so it
    is still there when the signal lands); True if it died mid-write."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    caught = stop_when(proc, lambda: any(".train_lmdb.tmp-" in p.name for p in out.glob(".*")))
    if proc.returncode is None:
        kill(proc)
    return caught and any(".tmp-" in p.name for p in out.glob(".*"))


@pytest.mark.slow
def test_sigkill_mid_write_leaves_no_partial_database(tmp_path: Path) -> None:
    """Kill the converter while it writes: the final path holds nothing or the previous complete database."""
    src = write_class_folders(tmp_path / "cf", classes=4, per_class=1500, size=(32, 32), ext=".jpg")
    out = tmp_path / "data"
    cmd = [sys.executable, "-m", "squeezecaffe", "build-lmdb", str(src), str(out), "--quiet", "--jobs", "1",
           "--val-fraction", "0"]
    assert _kill_when_writing(cmd, out), "the converter finished before it could be killed"
    assert not (out / "train_lmdb").exists()
    assert not (out / "manifest.json").exists()
    # A rerun cleans the leftovers and produces the complete database.
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with LmdbReader(out / "train_lmdb") as reader:
        assert len(reader) == 6000
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    # Killed while replacing it (--force, other content): the previous complete database is still there.
    before = records(out / "train_lmdb")
    assert _kill_when_writing([*cmd, "--force", "--resize", "16x16"], out)
    assert records(out / "train_lmdb") == before


def test_reader_agrees_with_plain_lmdb_and_survives_workers(tmp_path: Path) -> None:
    import torch.utils.data as tud

    src = write_class_folders(tmp_path / "cf", classes=2, per_class=6)
    for encoded in (False, True):
        out = tmp_path / f"d{encoded}"
        build_lmdb(src, out, quiet(encoded=encoded), val_fraction=0)
        plain = records(out / "train_lmdb")
        reader = LmdbReader(out / "train_lmdb")
        assert len(reader) == len(plain) == 12
        for i, (_, value) in enumerate(plain):
            datum = pb.Datum()
            datum.ParseFromString(value)
            assert datum.encoded == encoded
            img, label = reader[i]
            assert label == datum.label
            if not encoded:
                np.testing.assert_array_equal(img.ravel(), np.frombuffer(datum.data, np.uint8))
            else:
                np.testing.assert_array_equal(img.transpose(1, 2, 0), cv2.imdecode(np.frombuffer(datum.data, np.uint8), -1))
        loader = tud.DataLoader(reader, batch_size=4, num_workers=2, collate_fn=lambda b: b)
        seen = [label for batch in loader for _, label in batch]
        assert seen == [label for _, label in reader]
        reader.close()


def test_inspect_prints_and_draws(tmp_path: Path, capsys) -> None:
    src = write_tiny_imagenet(tmp_path / "tiny")
    build_lmdb(src, tmp_path / "d", quiet(), val_fraction=0)
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "d" / "train_lmdb"), "--grid", str(tmp_path / "g.png")]) == 0
    out = capsys.readouterr().out
    assert "12 records (12 raw, 0 encoded)" in out and "3x64x64" in out and "thing 1, object 1" in out
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_gen_reads_the_manifest(tmp_path: Path, capsys) -> None:
    src = write_tiny_imagenet(tmp_path / "tiny", size=(32, 32))
    build_lmdb(src, tmp_path / "d", quiet(), val_fraction=0)
    assert main(["gen", "fullbypass8", "--out", str(tmp_path / "net"), "--data", str(tmp_path / "d"),
                 "--batch-size", "4", "--test-batch-size", "3", "--epochs", "2"]) == 0
    from squeezecaffe.proto import read_text

    deploy = read_text(tmp_path / "net" / "deploy.prototxt", pb.NetParameter)
    assert list(deploy.layer[0].input_param.shape[0].dim) == [1, 3, 32, 32]
    assert next(la for la in deploy.layer if la.name == "conv10").convolution_param.num_output == 3
    solver = read_text(tmp_path / "net" / "solver.prototxt", pb.SolverParameter)
    assert (solver.test_interval, solver.max_iter, solver.test_iter[0]) == (3, 6, 2)  # 12/4, x2, ceil(6/3)
    tv = read_text(tmp_path / "net" / "train_val.prototxt", pb.NetParameter)
    assert tv.layer[0].data_param.source == str(tmp_path / "d" / "train_lmdb")


def test_inspect_shows_encoded_files_as_stored_and_draws_them_in_colour(tmp_path: Path, capsys) -> None:
    """RGBA, gray and 16-bit PNGs in an encoded database: inspect names each stored form, and the grid draws them."""
    src = _mixed_channel_folders(tmp_path / "src")
    cv2.imwrite(str(src / "class_0" / "deep.png"), (pattern_image(0, 9, (16, 16)).astype(np.uint16) * 257))
    assert main(["build-lmdb", str(src), str(tmp_path / "d"), "--encoded", "--quiet", "--val-fraction", "0"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "d" / "train_lmdb"), "--grid", str(tmp_path / "g.png")]) == 0
    out = capsys.readouterr().out
    for shape in ("4x16x16 (sampled", "1x16x16 (sampled", "3x16x16 (sampled", "3x16x16 16-bit (sampled"):
        assert shape in out, out
    assert cv2.imread(str(tmp_path / "g.png")) is not None
    deep = tmp_path / "deep"  # decoded natively (no force flag), 16-bit samples are refused, naming db and record
    for c in range(2):
        (deep / f"c{c}").mkdir(parents=True)
        cv2.imwrite(str(deep / f"c{c}" / "x.png"), pattern_image(c, 0, (8, 8)).astype(np.uint16) * 257)
    assert main(["build-lmdb", str(deep), str(tmp_path / "dd"), "--encoded", "--quiet", "--val-fraction", "0"]) == 0
    capsys.readouterr()
    assert main(["mean", str(tmp_path / "dd" / "train_lmdb"), "-o", str(tmp_path / "m.binaryproto")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'dd' / 'train_lmdb'} [00000000_c0/x.png]: a 16-bit encoded image" in err
    assert err.count("\n") == 1


def test_inspect_and_mean_of_an_empty_database_are_one_line(tmp_path: Path, capsys) -> None:
    env = lmdb.open(str(tmp_path / "empty_lmdb"))
    env.close()
    for argv in (["inspect", str(tmp_path / "empty_lmdb")], ["mean", str(tmp_path / "empty_lmdb"), "-o", str(tmp_path / "m")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "database is empty" in err and len(err.strip().splitlines()) == 1
    assert main(["inspect", str(tmp_path / "nothing_here")]) == 2
    assert "not an LMDB database" in capsys.readouterr().err


def test_encoded_images_of_several_sizes_get_channel_means(tmp_path: Path) -> None:
    src = write_class_folders(tmp_path / "cf", classes=2, per_class=2, size=(16, 16))
    cv2.imwrite(str(src / "class_0" / "wide.png"), pattern_image(0, 9, (16, 24)))
    manifest, _ = build_lmdb(src, tmp_path / "d", quiet(encoded=True), val_fraction=0)
    assert not (tmp_path / "d" / "mean.binaryproto").exists()
    assert len(manifest.mean_values) == 3 and all(0 < v < 255 for v in manifest.mean_values)


def test_the_mean_comes_from_train_whatever_the_split_order(tmp_path: Path) -> None:
    src = write_class_folders(tmp_path / "cf", classes=2, per_class=10)
    a, b = tmp_path / "a", tmp_path / "b"
    build_lmdb(src, a, quiet(jobs=1), val_fraction=0.5)
    build_lmdb(src, b, quiet(jobs=1, splits=("val", "train")), val_fraction=0.5)
    assert (a / "mean.binaryproto").read_bytes() == (b / "mean.binaryproto").read_bytes()
    with pytest.raises(UserError, match="unknown split 'tset'"):
        build_lmdb(src, tmp_path / "c", quiet(jobs=1, splits=("train", "tset")), val_fraction=0)


def test_a_source_without_val_gets_a_seeded_stratified_share_held_out(tmp_path: Path, capsys) -> None:
    """train/ and test/ class folders, no val (a newcomer's folder): build-lmdb holds 10% of train per class out as
    val by default and says so; the same seed holds out the same images; --val-fraction 0 keeps none; and `train`
    then starts with no extra flag."""
    src = tmp_path / "src"
    for split, per_class in (("train", 20), ("test", 4)):
        write_class_folders(src / split, classes=3, per_class=per_class, size=(16, 16))
    assert main(["build-lmdb", str(src), str(tmp_path / "a"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "has no val split: held out 10% of train per class as val" in out and "--val-fraction 0 keeps none" in out
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert {s: manifest["splits"][s]["count"] for s in ("train", "val", "test")} == {"train": 54, "val": 6, "test": 12}
    assert manifest["options"]["val_fraction"] == 0.1
    val = records(tmp_path / "a" / "val_lmdb")
    labels = sorted(pb.Datum.FromString(v).label for _, v in val)
    assert labels == [0, 0, 1, 1, 2, 2]  # stratified: 2 of each class's 20
    assert main(["build-lmdb", str(src), str(tmp_path / "b"), "--quiet"]) == 0
    assert records(tmp_path / "b" / "val_lmdb") == val  # seeded
    assert main(["build-lmdb", str(src), str(tmp_path / "c"), "--quiet", "--val-fraction", "0"]) == 0
    assert "val" not in json.loads((tmp_path / "c" / "manifest.json").read_text())["splits"]
    assert main(["train", "cifar_resnet_1111", "--data", str(tmp_path / "a"), "--engine", "torch", "--epochs", "1",
                 "--batch-size", "16", "--workers", "0", "--quiet", "--run-dir", str(tmp_path / "run")]) == 0
