""".caffemodel interchange (OpenCV's Caffe importer as the independent reader) and the fillers."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from squeezecaffe.engines.torchcaffe.fillers import fill_net, fill_tensor
from squeezecaffe.engines.torchcaffe.net import CaffeNet
from squeezecaffe.engines.torchcaffe.weights import load_caffemodel, save_caffemodel
from squeezecaffe.errors import UserError
from squeezecaffe.netgen.builder import build_deploy
from squeezecaffe.netgen.registry import MODELS, narrowed
from squeezecaffe.proto import parse_text, pb
from squeezecaffe.solvers.settings import resolve
from tests.conftest import model_params, random_caffemodel


def _opencv_prob(prototxt: Path, caffemodel: Path, x: np.ndarray) -> np.ndarray:
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    net.setInput(x)
    return net.forward().reshape(len(x), -1)


@pytest.mark.parametrize("name", [*model_params(sorted(MODELS)), "fullbypass8_narrow4"])
def test_engine_and_opencv_agree_on_every_registered_model(name: str, tmp_path: Path) -> None:
    spec = MODELS[name] if name in MODELS else narrowed(MODELS[name.split("_narrow")[0]], 4)
    cfg, _ = resolve(spec)
    deploy = build_deploy(spec, cfg)
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(text_format.MessageToString(deploy))
    written_by_protobuf = tmp_path / "random.caffemodel"
    written_by_protobuf.write_bytes(random_caffemodel(deploy, seed=3).SerializeToString())
    h, w = cfg.input_size
    x = np.random.default_rng(2).normal(0, 50, (2, 3, h, w)).astype(np.float32)

    net = CaffeNet(deploy, "TEST", where=name, input_shapes={"data": x.shape})
    report = load_caffemodel(net, written_by_protobuf)
    assert not report.missing
    with torch.no_grad():
        ours = net({"data": torch.from_numpy(x)}).blobs["prob"].reshape(2, -1).numpy()
    assert np.abs(ours - _opencv_prob(prototxt, written_by_protobuf, x)).max() <= 1e-4

    # and the file our engine writes is read by OpenCV into the same function
    fill_net(net, seed=11)
    gen = torch.Generator().manual_seed(5)  # seeded: the global generator made this test differ run to run
    with torch.no_grad():
        for module in net.layers:
            if module.lp.type == "BatchNorm":  # non-trivial statistics: the factor must be honoured
                module.blobs[0].normal_(0, 0.1, generator=gen)
                module.blobs[1].uniform_(1.0, 3.0, generator=gen)
                module.blobs[2].fill_(2.0)
        ours = net({"data": torch.from_numpy(x)}).blobs["prob"].reshape(2, -1).numpy()
    saved = save_caffemodel(net, tmp_path / "ours.caffemodel")
    assert np.abs(ours - _opencv_prob(prototxt, saved, x)).max() <= 1e-4


TINY = '''
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" }
layer { name: "ip" type: "InnerProduct" bottom: "c" top: "y" inner_product_param { num_output: 5 } }
'''


def _tiny() -> CaffeNet:
    return CaffeNet(parse_text(TINY, pb.NetParameter), "TEST", where="tiny")


def test_saved_caffemodel_round_trips_and_keeps_caffe_layouts(tmp_path: Path) -> None:
    net = _tiny()
    fill_net(net, 0)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for module in net.layers:
            for blob in module.blobs:
                blob.copy_(torch.randn(blob.shape, generator=gen))
    path = save_caffemodel(net, tmp_path / "t.caffemodel")
    model = pb.NetParameter.FromString(path.read_bytes())
    shapes = {layer.name: [tuple(b.shape.dim) for b in layer.blobs] for layer in model.layer}
    assert shapes["conv"] == [(4, 3, 3, 3), (4,)] and shapes["bn"] == [(4,), (4,), (1,)]
    assert shapes["ip"] == [(5, 64), (5,)]  # Caffe's N x K, no transpose
    again = _tiny()
    load_caffemodel(again, path)
    for a, b in zip(net.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)


def test_legacy_4d_blobs_load(tmp_path: Path) -> None:
    net = _tiny()
    fill_net(net, 0)
    model = random_caffemodel(parse_text(TINY, pb.NetParameter), seed=5)
    for layer in model.layer:
        for blob in layer.blobs:
            dims = list(blob.shape.dim)
            blob.ClearField("shape")
            blob.num, blob.channels, blob.height, blob.width = [1] * (4 - len(dims)) + dims
    path = tmp_path / "legacy.caffemodel"
    path.write_bytes(model.SerializeToString())
    load_caffemodel(net, path)
    ip_weight = np.asarray(model.layer[3].blobs[0].data, np.float32).reshape(5, 64)
    assert np.array_equal(net.layers[3].blobs[0].detach().numpy(), ip_weight)


def test_shape_and_count_mismatches_name_the_layer(tmp_path: Path) -> None:
    model = random_caffemodel(parse_text(TINY.replace("num_output: 5", "num_output: 7"), pb.NetParameter))
    path = tmp_path / "other.caffemodel"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(UserError, match=r"layer 'ip' blob 0 has shape 7x64, the net expects 5x64"):
        load_caffemodel(_tiny(), path)
    del model.layer[3].blobs[1]
    path.write_bytes(model.SerializeToString())
    with pytest.raises(UserError, match="layer 'ip' has 1 blobs, the net expects 2"):
        load_caffemodel(_tiny(), path)
    path.write_bytes(b"\xff\xff garbage")
    with pytest.raises(UserError, match="not a valid binary NetParameter"):
        load_caffemodel(_tiny(), path)


@pytest.mark.parametrize("filler,check", [
    ('type: "constant" value: 0.25', lambda v, fi, fo: np.all(v == 0.25)),
    ('type: "uniform" min: -2 max: 3', lambda v, fi, fo: v.min() >= -2 and v.max() <= 3 and abs(v.mean() - 0.5) < 0.05),
    ('type: "gaussian" std: 0.3', lambda v, fi, fo: abs(v.std() - 0.3) < 0.01),
    ('type: "xavier"', lambda v, fi, fo: np.abs(v).max() <= math.sqrt(3 / fi) and abs(v.std() - math.sqrt(1 / fi)) < 0.01),
    ('type: "xavier" variance_norm: FAN_OUT', lambda v, fi, fo: abs(v.std() - math.sqrt(1 / fo)) < 0.005),
    ('type: "msra"', lambda v, fi, fo: abs(v.std() - math.sqrt(2 / fi)) < 0.01 and abs(v.mean()) < 0.01),
    ('type: "msra" variance_norm: AVERAGE', lambda v, fi, fo: abs(v.std() - math.sqrt(4 / (fi + fo))) < 0.01),
])
def test_fillers_follow_caffes_definitions(filler, check):
    shape = (64, 32, 3, 3)  # fan_in = 32*9, fan_out = 64*9
    fp = parse_text(filler, pb.FillerParameter)
    t = torch.empty(shape)
    fill_tensor(t, fp, torch.Generator().manual_seed(0), "test")
    assert check(t.numpy(), 32 * 9, 64 * 9)
    again = torch.empty(shape)
    fill_tensor(again, fp, torch.Generator().manual_seed(0), "test")
    assert torch.equal(t, again)  # seeded


def test_default_fillers_are_caffes():
    net = CaffeNet(parse_text('''layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }
        layer { name: "conv" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 2 kernel_size: 1 } }
        layer { name: "sc" type: "Scale" bottom: "c" top: "c" scale_param { bias_term: true } }''', pb.NetParameter), "TEST")
    fill_net(net, 0)
    assert torch.all(net.layers[1].blobs[0] == 0)  # FillerParameter defaults to constant 0
    assert torch.all(net.layers[2].blobs[0] == 1) and torch.all(net.layers[2].blobs[1] == 0)  # Scale: identity
    with pytest.raises(UserError, match="filler type 'bilinear2' is not supported"):
        fill_tensor(torch.empty(2), pb.FillerParameter(type="bilinear2"), torch.Generator(), "x")
