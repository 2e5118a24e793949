"""Shared test helpers: paths to real-Caffe golden files and small builders."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from squeezecaffe.caffe_rules.shapes import infer_net
from squeezecaffe.proto import pb

REPO = Path(__file__).resolve().parents[1]
# Golden outputs of real Caffe (see tests/fixtures/caffe/README.md for how each was made).
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "caffe"


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


# A model trained in the suite: 3 epochs of a small ResNet on 4 learnable classes of 32x32 JPEGs.
# --patience-iterations 0: the controller counts epochs alone, so these 8-iteration epochs still see a plateau drop
TRAIN = ["train", "cifar_resnet_1111", "--engine", "torch", "--epochs", "3", "--batch-size", "16", "--workers", "0",
         "--quiet", "--patience-iterations", "0", "--solver-set", "base_lr=0.01"]
CLASS_WORDS = ("red stripes", "green stripes", "blue stripes", "red low stripes")


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    from squeezecaffe.data_tools.convert import ConvertOptions, build_lmdb
    from tests.datasets import write_class_folders

    root = tmp_path_factory.mktemp("train_data")
    src = write_class_folders(root / "images", classes=4, per_class=40, size=(32, 32), ext=".jpg")
    (src / "words.txt").write_text("".join(f"class_{i}\t{w}\n" for i, w in enumerate(CLASS_WORDS)))
    build_lmdb(src, root / "data", ConvertOptions(jobs=1, progress=False), val_fraction=0.25)
    return root / "data"


@pytest.fixture(scope="session")
def finished_run(data, tmp_path_factory) -> Path:
    from squeezecaffe.cli import main

    run_dir = tmp_path_factory.mktemp("runs") / "full"
    assert main([*TRAIN, "--data", str(data), "--run-dir", str(run_dir)]) == 0
    return run_dir


def random_caffemodel(net: pb.NetParameter, seed: int = 0) -> pb.NetParameter:
    """A .caffemodel-shaped NetParameter with random blobs, written with nothing but protobuf.

    BatchNorm gets positive variances and a scale factor of 1, so any runtime can use it.
    """
    rng = np.random.default_rng(seed)
    model = pb.NetParameter()
    model.CopyFrom(net)
    for info, layer in zip(infer_net(net, "TEST"), [la for la in model.layer], strict=False):
        assert info.name == layer.name
        for i, p in enumerate(info.params):
            if layer.type == "BatchNorm":
                values = [rng.normal(0, 0.1, p.shape), rng.uniform(0.5, 1.5, p.shape), np.ones(p.shape)][i]
            else:
                fan_in = int(np.prod(p.shape[1:])) if len(p.shape) > 1 else 1
                values = rng.normal(0, 1.0 / np.sqrt(fan_in), p.shape)
            blob = layer.blobs.add()
            blob.shape.dim.extend(p.shape)
            blob.data.extend(values.astype(np.float32).ravel().tolist())
    return model


# Full-size registry rows whose sweeps cost most (227x227 ImageNet nets, the wide CIFAR ResNets): in `make test`
# and `make test-slow`, left out of `make test-fast`, where a narrow fullbypass8 (same graph) stands in.
SLOW_MODELS = frozenset({"squeezenet_v1_0", "squeezenet_v1_1", "simple_bypass_v1_0", "complex_bypass_v1_0",
                         "cifar_resnet_18", "cifar_resnet_2231", "cifar_resnet_2221", "cifar_resnet_2211",
                         "cifar_resnet_2111"})


def model_params(names) -> list:
    """Registry names as pytest parameters, the costly ones marked slow."""
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_MODELS else n for n in names]


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `caffe` need our pycaffe build; without it they are skipped with the command that builds it."""
    marked = [item for item in items if item.get_closest_marker("caffe")]
    if not marked:
        return
    from squeezecaffe.engines.pycaffe.runtime import caffe_available

    if not caffe_available():
        if os.environ.get("SQUEEZECAFFE_REQUIRE_CAFFE") == "1":  # set by `make test` under CI=true
            raise pytest.UsageError("the caffe tests must run in CI, but `import caffe` fails after `make caffe`")
        skip = pytest.mark.skip(reason="Caffe is not built here: run `make caffe` (builds it from source)")
        for item in marked:
            item.add_marker(skip)


@pytest.fixture
def no_caffe(monkeypatch):
    """Behave as on a machine without the Caffe build, whether or not this one has it."""
    from squeezecaffe.engines.pycaffe import runtime
    from squeezecaffe.errors import CAFFE_ENGINE_MISSING, UserError

    def missing(cuda: bool = False):
        raise UserError(CAFFE_ENGINE_MISSING)

    monkeypatch.setattr(runtime, "import_caffe", missing)
    monkeypatch.setattr(runtime, "caffe_available", lambda: False)


def opencv_probabilities(deploy: pb.NetParameter, folder: Path, seed: int = 1) -> np.ndarray:
    """The deploy net with random weights, loaded by OpenCV's Caffe importer and run on one random input: its
    output (probabilities) as a flat array."""
    import cv2
    from google.protobuf import text_format

    (folder / "deploy.prototxt").write_text(text_format.MessageToString(deploy))
    (folder / "w.caffemodel").write_bytes(random_caffemodel(deploy).SerializeToString())
    net = cv2.dnn.readNetFromCaffe(str(folder / "deploy.prototxt"), str(folder / "w.caffemodel"))
    shape = tuple(int(d) for d in deploy.layer[0].input_param.shape[0].dim)
    net.setInput(np.random.default_rng(seed).normal(0, 50, shape).astype(np.float32))
    return net.forward().reshape(-1)
