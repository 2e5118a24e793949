"""The pieces the papers' recipes need: padded storage with random crops, per-channel std in the prototxt, the
paper recipes of seeds 001/002, fine-tuning (frozen layers, weights copied by name), and the CIFAR smoke run."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from squeezecaffe.caffe_rules.blobs import blob_values, read_caffemodel
from squeezecaffe.cli import main
from squeezecaffe.engines.torchcaffe.net import CaffeNet
from squeezecaffe.errors import UserError
from squeezecaffe.netgen.builder import build_deploy, build_train_val
from squeezecaffe.netgen.freeze import freeze
from squeezecaffe.netgen.variants import model_spec
from squeezecaffe.proto import parse_text, pb, read_text
from squeezecaffe.solvers.generate import generate
from squeezecaffe.solvers.recipes import resolve_recipe
from squeezecaffe.solvers.settings import resolve
from squeezecaffe.train.finetune import fit_weights
from tests.conftest import random_caffemodel
from tests.datasets import write_class_folders
from tests.test_importers import cifar10_binary


@pytest.fixture(scope="module")
def padded(tmp_path_factory) -> Path:
    """3 classes of 12x12 colour images stored with a 2-pixel reflected border."""
    root = tmp_path_factory.mktemp("padded")
    write_class_folders(root / "images", classes=3, per_class=8, size=(12, 12))
    assert main(["build-lmdb", str(root / "images"), str(root / "data"), "--pad", "2", "--val-fraction", "0.25",
                 "--quiet", "--jobs", "1"]) == 0
    return root


def test_pad_stores_the_border_and_records_it(padded: Path) -> None:
    from squeezecaffe.data_tools.lmdb_io import LmdbReader

    manifest = json.loads((padded / "data" / "manifest.json").read_text())
    assert (manifest["height"], manifest["width"], manifest["pad"]) == (16, 16, 2)
    assert manifest["options"]["pad_mode"] == "reflect" and len(manifest["std_values"]) == 3
    with LmdbReader(padded / "data" / "val_lmdb") as reader:
        stored, _ = next(iter(reader))
    assert stored.shape == (3, 16, 16)
    inner = stored[:, 2:-2, 2:-2]
    # the border mirrors the image without repeating its edge (numpy's 'reflect')
    np.testing.assert_array_equal(stored, np.pad(inner, ((0, 0), (2, 2), (2, 2)), mode="reflect"))
    # the std is the images' own (inside the border), per channel
    images = [cv2.imread(str(p)) for p in sorted((padded / "images").glob("*/*.png"))]
    assert all(s > 0 for s in manifest["std_values"])
    assert manifest["std_values"][0] == pytest.approx(np.std(np.stack(images)[..., 0]), rel=0.2)  # train split only


def test_padded_data_trains_on_random_crops_and_tests_on_the_centre(padded: Path) -> None:
    spec = model_spec("cifar_resnet:blocks=1:widths=4")
    cfg, _ = resolve(spec, data_dir=padded / "data")
    assert cfg.crop and cfg.input_size == (12, 12)
    net = build_train_val(spec, cfg)
    data = [lp for lp in net.layer if lp.type == "Data"]
    assert [lp.transform_param.crop_size for lp in data] == [12, 12]  # Caffe's crop_size is square
    # TEST: the centre crop of a padded record is the unpadded image, as eval/classify of a file gives it


def test_pad_rejects_bad_values(tmp_path: Path, capsys) -> None:
    write_class_folders(tmp_path / "images", classes=2, per_class=2)
    assert main(["build-lmdb", str(tmp_path / "images"), str(tmp_path / "d"), "--pad", "-1", "--quiet"]) == 2
    assert "--pad -1" in capsys.readouterr().err and not (tmp_path / "d" / "train_lmdb").exists()


# ------------------------------------------------------------------ per-channel std in the prototxt

def test_std_normalization_is_slice_power_concat_and_computes_x_over_std(padded: Path, tmp_path: Path) -> None:
    spec = model_spec("cifar_resnet:blocks=1:widths=4")
    cfg, _ = resolve(spec, data_dir=padded / "data", normalize="std")
    stds = json.loads((padded / "data" / "manifest.json").read_text())["std_values"]
    assert cfg.std_value == pytest.approx(tuple(stds), rel=1e-5)
    deploy = build_deploy(spec, cfg)
    types = [lp.type for lp in deploy.layer[:6]]
    assert types == ["Input", "Slice", "Power", "Power", "Power", "Concat"]
    assert [lp.power_param.scale for lp in deploy.layer[2:5]] == pytest.approx([1 / s for s in stds], rel=1e-5)
    conv1 = next(lp for lp in deploy.layer if lp.name == "conv1")
    assert conv1.bottom == ["data/std"]
    # the engine computes (x - mean) / std per channel: run the layers up to data/std
    net = CaffeNet(deploy, "TEST")
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0)) * 50
    out = net({"data": x}).blobs["data/std"]
    expected = x / torch.tensor(stds, dtype=torch.float32).view(1, 3, 1, 1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_std_normalized_deploy_loads_in_opencv_and_matches_our_engine(padded: Path, tmp_path: Path) -> None:
    spec = model_spec("cifar_resnet:blocks=1:widths=4")
    cfg, _ = resolve(spec, data_dir=padded / "data", normalize="std")
    deploy = build_deploy(spec, cfg)
    from google.protobuf import text_format

    (tmp_path / "deploy.prototxt").write_text(text_format.MessageToString(deploy))
    model = random_caffemodel(deploy)
    (tmp_path / "w.caffemodel").write_bytes(model.SerializeToString())
    cv_net = cv2.dnn.readNetFromCaffe(str(tmp_path / "deploy.prototxt"), str(tmp_path / "w.caffemodel"))
    x = np.random.default_rng(3).normal(0, 40, (1, 3, 12, 12)).astype(np.float32)
    cv_net.setInput(x)
    theirs = cv_net.forward().reshape(-1)
    from squeezecaffe.engines.torchcaffe.weights import copy_weights

    ours_net = CaffeNet(deploy, "TEST")
    copy_weights(ours_net, model)
    ours = ours_net({"data": torch.from_numpy(x)}).blobs["prob"].detach().numpy().reshape(-1)
    np.testing.assert_allclose(theirs, ours, atol=1e-5)


def test_normalize_std_needs_a_data_directory() -> None:
    with pytest.raises(UserError, match="give --data DIR"):
        resolve(model_spec("cifar_resnet"), normalize="std")


# ------------------------------------------------------------------ the paper recipes

def test_seed_002_paper_recipe(padded: Path) -> None:
    result = resolve_recipe(model_spec("cifar_resnet:blocks=1:widths=4"), "paper", data_dir=str(padded / "data"))
    assert (result.cfg.batch_size, result.sched.epochs, result.sched.solver_type) == (64, 150, "SGD")
    assert result.sched.momentum == 0.9 and result.cfg.std_value is not None and result.cfg.mirror
    assert "border" in result.values["augmentation"]
    solver = generate(model_spec("cifar_resnet_543"), "x", result.cfg, result.sched).solver
    assert solver.type == "SGD" and solver.lr_policy == "poly"
    # without padded data the recipe says what is missing instead of pretending
    unpadded = resolve_recipe(model_spec("cifar_resnet"), "paper")
    assert "rebuild the data with build-lmdb --pad 4" in unpadded.values["augmentation"]


@pytest.mark.parametrize("model, rate", [("sq1", 4e-4), ("sq1_final", 4e-4), ("firenext", 1e-3)])
def test_seed_001_paper_recipe(model: str, rate: float) -> None:
    result = resolve_recipe(model_spec(model), "paper")
    assert (result.sched.solver_type, result.sched.base_lr, result.sched.lr_policy) == ("Adam", rate, "fixed")
    assert result.cfg.input_size == (224, 224) and result.cfg.crop
    solver = generate(model_spec(model), "x", result.cfg, result.sched).solver
    assert solver.type == "Adam" and solver.lr_policy == "fixed" and not solver.HasField("power")


def test_crops_larger_than_the_stored_images_are_refused(padded: Path) -> None:
    with pytest.raises(UserError, match=r"stored at 16x16, smaller than the 224x224 crops sq1 takes \(paper recipe\); "
                                        r"rebuild with build-lmdb --resize 256x256"):
        resolve_recipe(model_spec("sq1"), "paper", data_dir=str(padded / "data"))


def test_paper_recipe_refuses_models_without_one() -> None:
    with pytest.raises(UserError, match="the papers state no schedule for squeezenet_v1_0"):
        resolve_recipe(model_spec("squeezenet_v1_0"), "paper")


# ------------------------------------------------------------------ fine-tuning

def test_freeze_sets_lr_mult_zero_on_every_blob_of_a_module() -> None:
    spec = model_spec("fullbypass8")
    net = build_train_val(spec, resolve(spec)[0])
    frozen = freeze(net, ["conv1", "fire2"])
    assert "conv1" in frozen and "conv1/scale" in frozen and "fire2/expand3x3" in frozen
    assert "fire3/squeeze1x1" not in frozen
    for lp in net.layer:
        if lp.name in frozen:
            assert [p.lr_mult for p in lp.param] == [0.0] * len(lp.param) and len(lp.param) >= 1
    scale = next(lp for lp in net.layer if lp.name == "conv1/scale")
    assert len(scale.param) == 2  # gamma and beta
    with pytest.raises(UserError, match="--freeze fire99: no layer"):
        freeze(net, ["fire99"])


def _release_like_weights(model: str, classes: int) -> pb.NetParameter:
    """A caffemodel with the public SqueezeNet release's layer names and shapes (1000 classes)."""
    spec = model_spec(model)
    cfg, _ = resolve(spec, classes=classes)
    return random_caffemodel(build_deploy(spec, cfg))


def _shapes(deploy: pb.NetParameter) -> dict:
    net = CaffeNet(deploy, "TEST")
    return {n: [tuple(b.shape) for b in m.blobs] for n, m in zip(net.layer_names, net.layers, strict=True)
            if len(m.blobs)}


@pytest.mark.parametrize("release_model", ["squeezenet_v1_0", "squeezenet_v1_1"])
def test_the_release_loads_by_name_into_a_ten_class_net(release_model: str) -> None:
    spec = model_spec(release_model)
    fitted, report = fit_weights(_release_like_weights(release_model, 1000),
                                 _shapes(build_deploy(spec, resolve(spec, classes=10)[0])))
    assert report.reinitialized == [("conv10", (1000, 512, 1, 1), (10, 512, 1, 1))]
    assert len(report.copied) == len(fitted.layer) == 25 and not report.not_in_file and not report.unused


def test_fit_weights_copies_by_name_and_reinitializes_a_changed_classifier() -> None:
    release = _release_like_weights("squeezenet_v1_1", 1000)
    spec = model_spec("squeezenet_v1_1")
    target = CaffeNet(build_deploy(spec, resolve(spec, classes=10)[0]), "TEST")
    shapes = {n: [tuple(b.shape) for b in m.blobs] for n, m in zip(target.layer_names, target.layers, strict=True)
              if len(m.blobs)}
    fitted, report = fit_weights(release, shapes, "release.caffemodel")
    assert report.reinitialized == [("conv10", (1000, 512, 1, 1), (10, 512, 1, 1))]
    assert "conv1" in report.copied and "fire9/expand3x3" in report.copied and len(report.copied) == 25
    assert "conv10" not in {lp.name for lp in fitted.layer}
    text = report.describe("release.caffemodel")
    assert "re-initialized from its filler (shape changed): conv10 1000x512x1x1 in the file, 10x512x1x1" in text
    # Sq-1 takes the release's features; its narrowed conv10, fc1 and classifier start from their fillers
    sq1 = model_spec("sq1")
    target = CaffeNet(build_deploy(sq1, resolve(sq1)[0]), "TEST")
    shapes = {n: [tuple(b.shape) for b in m.blobs] for n, m in zip(target.layer_names, target.layers, strict=True)
              if len(m.blobs)}
    _, report = fit_weights(release, shapes)
    assert len(report.copied) == 25 and report.not_in_file == ["fc1", "classifier"]
    assert report.reinitialized[0][0] == "conv10"


def _inner_product_file(**blob_fields) -> pb.NetParameter:
    """A caffemodel with one layer 'fc': a 3x4 weight blob stored as `blob_fields` says, and a bias of 3."""
    model = pb.NetParameter(name="file")
    lp = model.layer.add(name="fc", type="InnerProduct")
    weight = lp.blobs.add(**{k: v for k, v in blob_fields.items() if k != "dims"})
    if "dims" in blob_fields:
        weight.shape.dim.extend(blob_fields["dims"])
    weight.data.extend(np.arange(12, dtype=np.float32).tolist())
    bias = lp.blobs.add()
    bias.shape.dim.append(3)
    bias.data.extend([0.0, 1.0, 2.0])
    return model


@pytest.mark.parametrize("stored, fits", [
    ({"dims": [3, 4]}, True),
    ({"num": 1, "channels": 1, "height": 3, "width": 4}, True),  # legacy 4-field blob: Caffe pads with leading 1s
    ({"dims": [3, 4, 1, 1]}, False),  # same values, but Caffe's loader refuses the shape
    ({"dims": [4, 3]}, False),
])
def test_fit_weights_keeps_exactly_the_layers_the_loader_accepts(stored: dict, fits: bool) -> None:
    """fit_weights decides by the loader's own rule: a layer it keeps loads, a layer it drops would not have."""
    from squeezecaffe.engines.torchcaffe.weights import copy_weights

    net = CaffeNet(parse_text('''name: "n" layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 } } }
        layer { name: "fc" type: "InnerProduct" bottom: "x" top: "fc" inner_product_param { num_output: 3 } }''',
                             pb.NetParameter), "TEST")
    shapes = {"fc": [tuple(b.shape) for b in net.layers[1].blobs]}
    model = _inner_product_file(**stored)
    fitted, report = fit_weights(model, shapes) if fits else (None, None)
    if fits:
        assert report.copied == ["fc"] and not report.reinitialized
        copy_weights(net, fitted)
        assert net.layers[1].blobs[0].detach().numpy().ravel().tolist() == list(range(12))
        return
    with pytest.raises(UserError, match="no layer fits"):
        fit_weights(model, shapes)
    with pytest.raises(UserError, match="blob 0 has shape"):
        copy_weights(net, model)


def test_fine_tuning_run_copies_freezes_and_says_so(tmp_path: Path, capsys) -> None:
    """train --weights (a 5-class model) --freeze conv1 on 3 classes: conv1 copied and unchanged after training,
    conv10 re-initialized because its shape changed."""
    write_class_folders(tmp_path / "images", classes=3, per_class=6, size=(16, 16))
    assert main(["build-lmdb", str(tmp_path / "images"), str(tmp_path / "data"), "--val-fraction", "0.34",
                 "--quiet", "--jobs", "1"]) == 0
    model = "fullbypass8:fire2=4-8-8:fire3=4-8-8:fire4=4-16-16:fire5=4-16-16:fire6=4-16-16:fire7=4-16-16:" \
            "fire8=4-16-16:fire9=4-16-16"
    spec = model_spec(model)
    pretrained = random_caffemodel(build_deploy(spec, resolve(spec, classes=5, input_size=(16, 16))[0]))
    (tmp_path / "pre.caffemodel").write_bytes(pretrained.SerializeToString())
    run = tmp_path / "run"
    assert main(["train", model, "--data", str(tmp_path / "data"), "--engine", "torch", "--epochs", "1",
                 "--batch-size", "4", "--weights", str(tmp_path / "pre.caffemodel"), "--freeze", "conv1",
                 "--run-dir", str(run), "--quiet", "--recipe", "registry"]) == 0
    out = capsys.readouterr().out
    assert "re-initialized from its filler (shape changed): conv10 5x" in out
    trained = {lp.name: lp for lp in read_caffemodel(run / "best.caffemodel").layer}
    given = {lp.name: lp for lp in pretrained.layer}
    np.testing.assert_array_equal(blob_values(trained["conv1"].blobs[0]), blob_values(given["conv1"].blobs[0]))
    assert not np.array_equal(blob_values(trained["fire2/squeeze1x1"].blobs[0]),
                              blob_values(given["fire2/squeeze1x1"].blobs[0]))
    train_val = read_text(run / "train_val.prototxt", pb.NetParameter)
    assert [p.lr_mult for p in next(lp for lp in train_val.layer if lp.name == "conv1").param] == [0.0]
    assert json.loads((run / "run.json").read_text())["recipe"]["frozen"][:3] == ["conv1", "conv1/bn", "conv1/scale"]
    assert (run / "init.caffemodel").is_file()


# ------------------------------------------------------------------ the CIFAR smoke run, through the CLI

def test_cifar_smoke_run_import_pad_train_eval(tmp_path: Path, capsys) -> None:
    """Synthetic CIFAR-10 binary batches -> import -> build-lmdb --pad 4 -> train cifar_resnet --blocks 1-1-1
    (narrow) one epoch with the paper recipe's normalization -> eval on the test split."""
    cifar10_binary(tmp_path / "cifar", per_batch=10)
    assert main(["import", "cifar10", str(tmp_path / "cifar"), str(tmp_path / "png"), "--jobs", "1"]) == 0
    assert main(["build-lmdb", str(tmp_path / "png"), str(tmp_path / "data"), "--pad", "4", "--val-fraction", "0.2",
                 "--quiet", "--jobs", "1"]) == 0
    run = tmp_path / "run"
    assert main(["train", "cifar_resnet", "--blocks", "1-1-1", "--widths", "8-16-32", "--data", str(tmp_path / "data"),
                 "--engine", "torch", "--epochs", "1", "--batch-size", "8", "--normalize", "std",
                 "--run-dir", str(run), "--quiet"]) == 0
    assert main(["eval", str(run), "--split", "test", "--quiet"]) == 0
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert metrics["count"] == 10 and 0.0 <= metrics["top1"] <= 1.0
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "cifar_resnet:blocks=1-1-1:widths=8-16-32"
    deploy = read_text(run / "deploy.prototxt", pb.NetParameter)
    assert deploy.layer[0].input_param.shape[0].dim[2:] == [32, 32] and deploy.layer[1].type == "Slice"
    capsys.readouterr()
