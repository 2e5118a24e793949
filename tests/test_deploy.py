"""eval / classify / report on a model trained in the suite (conftest's `finished_run`)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from squeezecaffe.caffe_rules.blobs import read_caffemodel
from squeezecaffe.data_tools.convert import ConvertOptions, build_lmdb
from squeezecaffe.data_tools.lmdb_io import LmdbReader
from squeezecaffe.engines.torchcaffe.net import load_net
from squeezecaffe.engines.torchcaffe.weights import load_caffemodel
from squeezecaffe.evaluation.artifacts import resolve_artifacts
from squeezecaffe.evaluation.preprocess import Preprocessor
from squeezecaffe.netgen.summary import summarize
from squeezecaffe.proto import pb, read_text
from squeezecaffe.train.logs import read_log
from tests.conftest import CLASS_WORDS
from tests.datasets import pattern_image
from tests.test_cli import run


def epoch1(run_dir: Path) -> Path:
    """The first epoch's snapshot: a model that still makes mistakes (best.caffemodel scores 100%)."""
    return run_dir / "snapshots" / "cifar_resnet_1111_iter_8.caffemodel"


@pytest.fixture(scope="module")
def mistaken(finished_run: Path, data: Path) -> Path:
    """A model that makes mistakes to compare runtimes on (the trained weights score 100% on this easy set): the
    epoch-1 weights with the classifier's class-0 bias raised by the median margin of the other classes' val images
    over class 0, so about half of them go to class 0. Written inside the run's snapshots/ (eval finds the run)."""
    path = finished_run / "snapshots" / "mistaken.caffemodel"
    logits, labels = _direct_logits(finished_run, data / "val_lmdb", epoch1(finished_run))
    others = labels != 0
    shift = float(np.median(logits[others, labels[others]] - logits[others, 0])) + 1e-3
    model = read_caffemodel(epoch1(finished_run))
    bias = next(lp for lp in model.layer if lp.name == "classifier").blobs[1]
    bias.data[0] += shift
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="module")
def evals(mistaken: Path, tmp_path_factory) -> dict[str, dict]:
    """The val split scored by both runtimes, with the mistaken weights (found inside the run's snapshots/)."""
    from squeezecaffe.cli import main

    out = tmp_path_factory.mktemp("evals")
    results = {}
    for engine in ("torch", "opencv"):
        assert main(["eval", str(mistaken), "--split", "val", "--engine", engine, "--out",
                     str(out / engine), "--quiet"]) == 0
        results[engine] = json.loads((out / engine / "metrics.json").read_text())
        results[engine]["dir"] = out / engine
    return results


def _direct_logits(run_dir: Path, db: Path, weights: Path) -> tuple[np.ndarray, np.ndarray]:
    """The deploy net run by hand: TEST mean from train_val, every record once."""
    net = load_net(run_dir / "deploy.prototxt")
    assert not load_caffemodel(net, weights).missing
    net.eval()
    train_val = read_text(run_dir / "train_val.prototxt", pb.NetParameter)
    mean = np.asarray(next(lp for lp in train_val.layer if lp.type == "Data").transform_param.mean_value, np.float32)
    reader = LmdbReader(db)
    images, labels = zip(*(reader[i] for i in range(len(reader))), strict=True)
    x = np.stack(images).astype(np.float32) - mean.reshape(1, -1, 1, 1)
    with torch.no_grad():
        logits = net({"data": torch.from_numpy(x)}).blobs["classifier"].numpy()
    return logits.astype(np.float64), np.asarray(labels)


def test_eval_torch_and_opencv_agree_and_json_equals_a_direct_recomputation(evals, mistaken: Path, finished_run: Path,
                                                                          data: Path):
    torch_m, cv_m = evals["torch"], evals["opencv"]
    assert torch_m["count"] == cv_m["count"] == 40
    assert 0.3 < torch_m["top1"] < 1.0 and torch_m["errors"]  # a model with mistakes to compare
    assert torch_m["top1"] == cv_m["top1"] and torch_m["confusion"] == cv_m["confusion"]
    assert abs(torch_m["loss"] - cv_m["loss"]) < 1e-4

    logits, labels = _direct_logits(finished_run, data / "val_lmdb", mistaken)
    predicted = logits.argmax(1)
    assert torch_m["top1"] == pytest.approx((predicted == labels).mean(), abs=1e-12)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    assert torch_m["top5"] == pytest.approx(np.mean([lab in row for lab, row in zip(labels, top5, strict=True)]))
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    assert torch_m["loss"] == pytest.approx(-logp[np.arange(len(labels)), labels].mean(), rel=1e-5)
    confusion = np.zeros((4, 4), int)
    for t, p in zip(labels, predicted, strict=True):
        confusion[t, p] += 1
    assert torch_m["confusion"] == confusion.tolist()
    for c in torch_m["per_class"]:
        mask = labels == c["index"]
        assert c["count"] == mask.sum() and c["top1"] == pytest.approx((predicted[mask] == c["index"]).mean())
        assert c["name"] == CLASS_WORDS[c["index"]]
    assert len(torch_m["errors"]) == int((predicted != labels).sum())
    assert all(e["predicted"] != e["true"] for e in torch_m["errors"])
    probs = [e["probability"] for e in torch_m["errors"]]
    assert probs == sorted(probs, reverse=True)  # most confident mistakes first
    assert set(torch_m["best_classes"]) <= set(CLASS_WORDS)
    for name in ("confusion.png", "errors.png"):
        assert cv2.imread(str(evals["torch"]["dir"] / name)) is not None


def test_eval_of_an_image_folder_equals_eval_of_its_lmdb(finished_run: Path, data: Path, tmp_path: Path, capsys):
    src = Path(json.loads((data / "manifest.json").read_text())["options"]["source"])
    build_lmdb(src, tmp_path / "all", ConvertOptions(jobs=1, progress=False), val_fraction=0)
    code, _, err = run(capsys, "eval", str(finished_run), "--data", str(tmp_path / "all" / "train_lmdb"),
                       "--out", str(tmp_path / "db"), "--quiet")
    assert code == 0, err
    code, out, err = run(capsys, "eval", str(finished_run), "--data", str(src), "--out", str(tmp_path / "files"),
                         "--quiet")
    assert code == 0, err
    a = json.loads((tmp_path / "db" / "metrics.json").read_text())
    b = json.loads((tmp_path / "files" / "metrics.json").read_text())
    assert a["count"] == b["count"] == 160
    assert a["confusion"] == b["confusion"] and a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    assert "best classes:" in out and "top-1" in out


def test_eval_of_a_folder_skips_and_lists_unreadable_files_and_keeps_the_runs_own_figures(
        finished_run: Path, mistaken: Path, data: Path, tmp_path: Path, capsys):
    import shutil

    src = Path(json.loads((data / "manifest.json").read_text())["options"]["source"])
    photos = tmp_path / "photos"
    shutil.copytree(src, photos)
    first_class = sorted(p for p in photos.iterdir() if p.is_dir())[0]
    (first_class / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole JPEG")
    (first_class / "empty.png").write_bytes(b"")
    code, _, err = run(capsys, "eval", str(finished_run), "--split", "train", "--quiet")
    assert code == 0, err
    own = (finished_run / "eval" / "train" / "metrics.json").read_bytes()

    code, _, err = run(capsys, "eval", str(finished_run), "--data", str(photos), "--quiet")  # 2 of 162 > 1%
    assert code == 2 and "2 of 162 images could not be read" in err and len(err.strip().splitlines()) == 1

    code, out, err = run(capsys, "eval", str(mistaken), "--data", str(photos), "--quiet",
                         "--max-skip", "0.05")
    assert code == 0, err
    assert "skipped 2 unreadable image(s)" in out
    code, _, err = run(capsys, "eval", str(mistaken), "--data", str(src), "--quiet",
                       "--out", str(tmp_path / "clean"))
    assert code == 0, err
    got = json.loads((finished_run / "eval" / "photos-train" / "metrics.json").read_text())
    clean = json.loads((tmp_path / "clean" / "metrics.json").read_text())
    assert sorted(Path(s["key"]).name for s in got["skipped"]) == ["broken.jpg", "empty.png"]
    assert got["count"] == clean["count"] == 160 and got["confusion"] == clean["confusion"]
    assert got["errors"] and [e["key"] for e in got["errors"]] == [e["key"] for e in clean["errors"]]
    # a folder's "train" split did not replace the run's own train figures (report reads those)
    assert (finished_run / "eval" / "train" / "metrics.json").read_bytes() == own


def test_preprocessing_a_file_equals_preprocessing_its_stored_record(finished_run: Path, data: Path):
    art = resolve_artifacts(str(finished_run))
    pre = Preprocessor(art)
    reader = LmdbReader(data / "val_lmdb")
    src = Path(json.loads((data / "manifest.json").read_text())["options"]["source"])
    for i in range(3):
        rel = reader.keys[i].decode().split("_", 1)[1]
        img, _ = reader[i]
        np.testing.assert_array_equal(pre.from_file(src / rel), pre.from_stored(img))


def test_classify_odd_images_and_report_bad_files_without_stopping(finished_run: Path, tmp_path: Path, capsys):
    base = pattern_image(1, 999, (48, 40))
    cv2.imwrite(str(tmp_path / "gray.jpg"), cv2.cvtColor(base, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(tmp_path / "alpha.png"), np.dstack([base, base[:, :, 0]]))
    buf = io.BytesIO()
    Image.fromarray(base[:, :, ::-1]).convert("CMYK").save(buf, "JPEG")
    (tmp_path / "cmyk.jpg").write_bytes(buf.getvalue())
    (tmp_path / "notes.jpg").write_text("not an image")
    files = [tmp_path / n for n in ("gray.jpg", "missing.png", "alpha.png", "notes.jpg", "cmyk.jpg")]
    preds = tmp_path / "predictions.txt"
    code, out, err = run(capsys, "classify", str(finished_run), *map(str, files), "--predictions", str(preds))
    assert code == 1
    lines = [line for line in out.splitlines() if line.startswith(str(tmp_path))]
    assert [line.split(":")[0] for line in lines] == [str(tmp_path / n) for n in ("gray.jpg", "alpha.png", "cmyk.jpg")]
    assert all(line.count("%") == 4 for line in lines)  # top-5 of 4 classes shows all 4
    assert f"{tmp_path / 'missing.png'}: file not found" in err
    assert f"{tmp_path / 'notes.jpg'}: not a decodable image" in err
    written = preds.read_text().splitlines()
    assert [w.split()[0] for w in written] == ["gray.jpg", "alpha.png", "cmyk.jpg"]
    assert all(w.split()[1] in {f"class_{i}" for i in range(4)} for w in written)


def test_classify_takes_a_folders_images_as_build_lmdb_does(tmp_path: Path) -> None:
    """Every decodable format, in path order; hidden files and folders and other files passed over."""
    from squeezecaffe.evaluation.classify import expand_inputs

    for name in ("b.png", "._b.png", ".ipynb_checkpoints/c.png", "sub/a.TIF", "sub/x.webp", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert expand_inputs([str(tmp_path), str(tmp_path / "notes.txt")]) == [
        tmp_path / "b.png", tmp_path / "sub" / "a.TIF", tmp_path / "sub" / "x.webp", tmp_path / "notes.txt"]


def test_classify_a_folder_writes_one_prediction_per_image(finished_run: Path, data: Path, tmp_path: Path, capsys):
    src = Path(json.loads((data / "manifest.json").read_text())["options"]["source"]) / "class_2"
    preds = tmp_path / "p.txt"
    code, _, err = run(capsys, "classify", str(finished_run), str(src), "--predictions", str(preds), "--top", "1")
    assert code == 0, err
    rows = preds.read_text().splitlines()
    assert len(rows) == 40
    assert sum(r.endswith(" class_2") for r in rows) >= 30  # a learnt class, mostly right


def test_report_is_a_table_3_row_from_the_run_files(finished_run: Path, evals, tmp_path: Path, capsys):
    code, _, err = run(capsys, "eval", str(finished_run), "--split", "train", "--quiet")
    assert code == 0, err
    report = tmp_path / "report.md"
    code, _, err = run(capsys, "report", str(finished_run), "-o", str(report))
    assert code == 0, err
    header, _, row = report.read_text().splitlines()
    cells = [c.strip() for c in row.strip("|").split("|")]
    columns = [c.strip() for c in header.strip("|").split("|")]
    values = dict(zip(columns, cells, strict=True))
    best = max((r for r in read_log(finished_run / "log.csv") if r["Phase"] == "val"), key=lambda r: float(r["val_top1"]))
    assert values["model"] == "cifar_resnet_1111"
    assert values["val top-1"] == f"{100 * float(best['val_top1']):.2f}"
    train = json.loads((finished_run / "eval" / "train" / "metrics.json").read_text())
    assert values["train top-1"] == f"{100 * train['top1']:.2f}"
    assert values["test top-1"] == "—"  # no test split in this dataset
    params = summarize(read_text(finished_run / "deploy.prototxt", pb.NetParameter)).trainable
    assert values["params"] == f"{params:,}"
    assert values["caffemodel MB"] == f"{(finished_run / 'best.caffemodel').stat().st_size / 1e6:.1f}"
    assert values["epochs"] == "3" and values["device"] == "CPU x" + str(__import__("os").cpu_count())
    assert cv2.imread(str(report.with_suffix(".png"))) is not None


@pytest.mark.parametrize("argv, message", [
    (["eval", "{tmp}/nothing"], "no such run directory or .caffemodel"),
    (["eval", "{run}", "--engine", "caffe"], "pycaffe engine is not available"),
    (["eval", "{run}", "--split", "test"], "no 'test' split"),
    (["eval", "{run}/best.caffemodel", "--model", "original8", "--data", "{data}"], "the net expects"),
    (["eval", "{tmp}"], "not a run directory"),
    (["classify", "{run}", "{tmp}/empty"], "no images found"),
    (["eval", "{run}", "--max-skip", "1.5"], "--max-skip 1.5: give a share"),
])
def test_bad_eval_and_classify_calls_are_one_line(argv, message, finished_run, data, tmp_path, capsys, no_caffe):
    (tmp_path / "empty").mkdir()
    argv = [a.format(tmp=tmp_path, run=finished_run, data=data) for a in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_test_transform_follows_caffes_phase_rules(tmp_path: Path) -> None:
    """The TEST transform is the Data layer Caffe would put in the TEST net: one with no include rule counts."""
    from squeezecaffe.evaluation.artifacts import _test_transform

    layer = 'layer {{ name: "{n}" type: "Data" top: "data" top: "label" {inc} transform_param {{ mirror: true ' \
            'mean_value: {m} }} data_param {{ source: "x" batch_size: 1 }} }}\n'
    path = tmp_path / "train_val.prototxt"
    path.write_text(layer.format(n="d", inc="", m=100))
    tp = _test_transform(path)
    assert tp is not None and list(tp.mean_value) == [100] and not tp.mirror
    path.write_text(layer.format(n="tr", inc="include { phase: TRAIN }", m=1)
                    + layer.format(n="te", inc="exclude { phase: TRAIN }", m=7))
    assert list(_test_transform(path).mean_value) == [7]
    path.write_text(layer.format(n="tr", inc="include { phase: TRAIN }", m=1))
    assert _test_transform(path) is None


def test_a_run_without_best_takes_its_newest_complete_snapshot(finished_run: Path, tmp_path: Path) -> None:
    import shutil

    from squeezecaffe.evaluation.artifacts import run_weights

    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    (copy / "best.caffemodel").unlink()
    (copy / "snapshots" / "mistaken.caffemodel").unlink(missing_ok=True)
    newest = copy / "snapshots" / "cifar_resnet_1111_iter_24.caffemodel"
    assert run_weights(copy).name == newest.name
    (copy / "snapshots" / "cifar_resnet_1111_iter_24.json").unlink()  # no marker: not a complete snapshot
    assert run_weights(copy).name == "cifar_resnet_1111_iter_16.caffemodel"


def test_a_prediction_shows_a_class_id_only_where_it_differs_from_the_name() -> None:
    from squeezecaffe.data_tools.layouts import ClassLabel
    from squeezecaffe.evaluation.classify import Prediction, format_prediction

    pred = Prediction(Path("a.png"), [(ClassLabel(0, "n01443537", "goldfish"), 0.75), (ClassLabel(1, "cat", "cat"), 0.25)])
    assert format_prediction(pred) == "a.png: 1. goldfish (n01443537) 75.0%  2. cat 25.0%"
