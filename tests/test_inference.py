"""Shape inference follows Caffe's rounding rules, where PyTorch's defaults differ."""

from __future__ import annotations

import pytest

from squeezecaffe.caffe_rules.shapes import infer_net, pool_out
from squeezecaffe.errors import UserError
from squeezecaffe.netgen.dsl import NetBuilder
from squeezecaffe.netgen.summary import summarize
from squeezecaffe.proto import pb, read_text
from tests.conftest import FIXTURES


@pytest.mark.parametrize(("size", "k", "s", "p", "expected"), [
    (14, 3, 2, 0, 7),  # floor would give 6
    (112, 3, 2, 1, 57),  # floor would give 56
    (64, 3, 2, 0, 32),
    (6, 3, 2, 1, 4),  # fixture's AVE pool
    (6, 3, 2, 0, 3),
    (5, 2, 2, 1, 3),  # last window would start in the padding only: dropped (ceil gives 4)
])
def test_pooling_uses_ceil_and_the_last_window_rule(size, k, s, p, expected) -> None:
    assert pool_out(size, k, s, p) == expected


def test_zoo_shapes_match_real_caffe_blobs() -> None:
    import numpy as np

    net = read_text(FIXTURES / "layers" / "zoo.prototxt", pb.NetParameter)
    infos = infer_net(net, "TEST")
    blobs = np.load(FIXTURES / "layers" / "zoo_test.npz")
    for info in infos:
        for top, shape in zip(info.layer.top, info.top_shapes, strict=False):
            key = f"blob/{top}"
            if key in blobs.files:
                assert tuple(blobs[key].shape) == tuple(shape), top


def test_summary_of_a_handwritten_net_counts_params() -> None:
    n = NetBuilder("h")
    x = n.layer("Input", name="data", shape=dict(dim=[2, 3, 10, 10]))
    c = n.layer("Convolution", x, name="conv", num_output=4, kernel_size=3, group=1)
    ip = n.layer("InnerProduct", c, name="fc", num_output=5)
    n.layer("Softmax", ip, name="prob")
    s = summarize(n.net)
    assert s.weights == 4 * 3 * 9 + 5 * 4 * 8 * 8
    assert s.trainable == s.weights + 4 + 5
    assert s.flops == 2 * (4 * 8 * 8 * 27 + 256 * 5)


def test_unsupported_layer_is_named() -> None:
    net = pb.NetParameter()
    net.layer.add(name="data", type="Input", top=["x"]).input_param.shape.add(dim=[1, 3, 4, 4])
    net.layer.add(name="weird", type="Frobnicate", bottom=["x"], top=["y"])
    with pytest.raises(UserError, match=r"layer 'weird' \(Frobnicate\): layer type not supported"):
        infer_net(net)
