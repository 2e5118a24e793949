"""Shared test helpers: paths to real-Caffe golden files and small builders."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from squeezecaffe.netgen.inference import infer_net
from squeezecaffe.proto import pb

REPO = Path(__file__).resolve().parents[1]
# Golden outputs of real Caffe, copied from ../shared/fixtures/caffe (see tests/fixtures/caffe/README.md).
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "caffe"


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


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


def have(tool: str) -> bool:
    return shutil.which(tool) is not None
