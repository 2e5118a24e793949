"""Each torch-engine layer against the NumPy reference of Caffe's formulas (float64, 1e-5 relative)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from squeezecaffe.engines.torchcaffe.net import CaffeNet
from squeezecaffe.errors import UserError
from squeezecaffe.proto import parse_text, pb
from tests.caffe_ref import (
    accuracy,
    bn_running,
    bn_train_backward,
    bn_train_forward,
    conv_backward,
    conv_forward,
    pool_backward,
    pool_forward,
    softmax,
    softmax_loss,
)

RTOL = 1e-5


def make_net(layers: str, inputs: dict[str, tuple[int, ...]], phase: str = "TRAIN") -> CaffeNet:
    shapes = " ".join("shape { " + " ".join(f"dim: {d}" for d in s) + " }" for s in inputs.values())
    tops = " ".join(f'top: "{n}"' for n in inputs)
    text = f'layer {{ name: "in" type: "Input" {tops} input_param {{ {shapes} }} }}\n{layers}'
    net = CaffeNet(parse_text(text, pb.NetParameter), phase, where="test")
    return net.double()


def set_blobs(net: CaffeNet, layer: str, *arrays: np.ndarray) -> None:
    module = net.layers[net.layer_names.index(layer)]
    with torch.no_grad():
        for blob, arr in zip(module.blobs, arrays, strict=True):
            blob.copy_(torch.from_numpy(np.asarray(arr, np.float64)))


def run(net: CaffeNet, inputs: dict[str, np.ndarray], top: str, dtop: np.ndarray | None = None, grad_inputs=("x",)):
    """Forward; if dtop is given, backpropagate it from `top`; returns (top value, input grads, param grads)."""
    tensors = {k: torch.tensor(v, dtype=torch.float64, requires_grad=k in grad_inputs) for k, v in inputs.items()}
    res = net(tensors)
    out = res.blobs[top]
    grads, pgrads = {}, {}
    if dtop is not None:
        out.backward(torch.from_numpy(dtop))
        grads = {k: t.grad.numpy() for k, t in tensors.items() if t.grad is not None}
        for name, module in zip(net.layer_names, net.layers, strict=True):
            for i, blob in enumerate(module.blobs):
                if blob.grad is not None:
                    pgrads[(name, i)] = blob.grad.numpy()
    return out.detach().numpy(), grads, pgrads


def close(a, b, rtol=RTOL):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(1e-12, float(np.max(np.abs(b)))))


rng = np.random.default_rng(0)  # rebound before every test by fresh_rng


@pytest.fixture(autouse=True)
def fresh_rng(request) -> None:
    """One generator per test, seeded from the test's own id: a test draws the same numbers whichever tests ran
    before it (-k, -x, a reordered run), not what a shared module-level generator happens to be at."""
    global rng
    rng = np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.mark.parametrize("spec", [
    dict(k=(3, 3), s=(1, 1), p=(0, 0), d=(1, 1), g=1, bias=True),
    dict(k=(3, 3), s=(2, 2), p=(1, 1), d=(1, 1), g=1, bias=True),
    dict(k=(1, 1), s=(1, 1), p=(0, 0), d=(1, 1), g=1, bias=False),
    dict(k=(3, 2), s=(2, 1), p=(1, 0), d=(1, 1), g=2, bias=True),
    dict(k=(3, 3), s=(1, 1), p=(2, 2), d=(2, 2), g=1, bias=True),
])
def test_convolution(spec):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = spec["k"], spec["s"], spec["p"], spec["d"]
    g = spec["g"]
    x = rng.normal(size=(2, 4, 9, 8))
    w = rng.normal(size=(6, 4 // g, kh, kw))
    b = rng.normal(size=6) if spec["bias"] else None
    net = make_net(f'''layer {{ name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param {{
        num_output: 6 kernel_h: {kh} kernel_w: {kw} stride_h: {sh} stride_w: {sw} pad_h: {ph} pad_w: {pw}
        dilation: {dh} group: {g} bias_term: {str(spec["bias"]).lower()} }} }}''', {"x": x.shape})
    set_blobs(net, "c", *([w, b] if b is not None else [w]))
    ref = conv_forward(x, w, b, (sh, sw), (ph, pw), (dh, dw), g)
    dy = rng.normal(size=ref.shape)
    y, grads, pgrads = run(net, {"x": x}, "y", dy)
    close(y, ref)
    dx, dw_, db = conv_backward(x, w, dy, (sh, sw), (ph, pw), (dh, dw), g)
    close(grads["x"], dx)
    close(pgrads[("c", 0)], dw_)
    if b is not None:
        close(pgrads[("c", 1)], db)


@pytest.mark.parametrize("size,k,s,p,out", [
    (14, 3, 2, 0, 7),  # floor would give 6
    (112, 3, 2, 1, 57),  # PyTorch's default (floor) gives 56
    (6, 3, 2, 1, 4),
    (7, 2, 2, 1, 4),  # the last-window rule removes a window starting in the padding
    (5, 3, 2, 2, 4),  # pad > kernel/2: Caffe allows it, PyTorch's pooling does not
    (8, 3, 3, 0, 3),
])
@pytest.mark.parametrize("kind", ["MAX", "AVE"])
def test_pooling(size, k, s, p, out, kind):
    channels = 1 if size > 50 else 3
    x = rng.normal(size=(2, channels, size, size))
    if kind == "MAX":  # a tie in every window: the gradient must go to the first maximum
        x[:, :, ::2, ::2] = np.round(x[:, :, ::2, ::2])
    net = make_net(f'layer {{ name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param {{ pool: {kind} '
                   f'kernel_size: {k} stride: {s} pad: {p} }} }}', {"x": x.shape})
    ref, aux = pool_forward(x, kind, k, s, p)
    assert ref.shape[2:] == (out, out)
    dy = rng.normal(size=ref.shape)
    y, grads, _ = run(net, {"x": x}, "y", dy)
    assert y.shape == ref.shape
    close(y, ref)
    close(grads["x"], pool_backward(x, kind, aux, dy))


def test_global_pooling():
    x = rng.normal(size=(2, 3, 5, 7))
    net = make_net('layer { name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: AVE global_pooling: true } }',
                   {"x": x.shape})
    dy = rng.normal(size=(2, 3, 1, 1))
    y, grads, _ = run(net, {"x": x}, "y", dy)
    close(y, x.mean(axis=(2, 3), keepdims=True))
    close(grads["x"], np.broadcast_to(dy / 35, x.shape))


def test_batchnorm_train_forward_backward_and_running_statistics():
    xs = [rng.normal(2.0, 3.0, size=(4, 3, 5, 5)) for _ in range(3)]
    net = make_net('layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" '
                   'batch_norm_param { moving_average_fraction: 0.9 } }',
                   {"x": xs[0].shape})
    for x in xs:
        dy = rng.normal(size=x.shape)
        y, grads, pgrads = run(net, {"x": x}, "y", dy)
        close(y, bn_train_forward(x, 1e-5)[0])
        close(grads["x"], bn_train_backward(x, dy, 1e-5))
        assert not pgrads  # Caffe's BatchNorm computes no parameter gradients
    blobs = [b.detach().numpy() for b in net.layers[1].blobs]
    for got, want in zip(blobs, bn_running(xs, 0.9), strict=True):
        close(got, want)


def test_batchnorm_global_stats_divide_by_the_scale_factor():
    x = rng.normal(size=(2, 3, 4, 4))
    mean_sum, var_sum, factor = rng.normal(size=3), rng.uniform(1, 2, size=3), np.array([1.7])
    for phase, extra in [("TEST", ""), ("TRAIN", "batch_norm_param { use_global_stats: true }")]:
        net = make_net(f'layer {{ name: "bn" type: "BatchNorm" bottom: "x" top: "y" {extra} }}', {"x": x.shape}, phase)
        set_blobs(net, "bn", mean_sum, var_sum, factor)
        dy = rng.normal(size=x.shape)
        y, grads, _ = run(net, {"x": x}, "y", dy)
        m, v = mean_sum / 1.7, var_sum / 1.7
        inv = 1 / np.sqrt(v + 1e-5).reshape(1, -1, 1, 1)
        close(y, (x - m.reshape(1, -1, 1, 1)) * inv)
        close(grads["x"], dy * inv)
        close(net.layers[1].blobs[2].detach().numpy(), factor)  # statistics untouched


def test_scale_with_bias_and_relu_negative_slope():
    x = rng.normal(size=(2, 3, 4, 4))
    s, b = rng.normal(size=3), rng.normal(size=3)
    net = make_net('''layer { name: "sc" type: "Scale" bottom: "x" top: "y" scale_param { bias_term: true } }
                      layer { name: "r" type: "ReLU" bottom: "y" top: "y" relu_param { negative_slope: 0.1 } }''',
                   {"x": x.shape})
    set_blobs(net, "sc", s, b)
    z = x * s.reshape(1, -1, 1, 1) + b.reshape(1, -1, 1, 1)
    dy = rng.normal(size=x.shape)
    y, grads, pgrads = run(net, {"x": x}, "y", dy)
    close(y, np.where(z > 0, z, 0.1 * z))
    dz = dy * np.where(z > 0, 1.0, 0.1)
    close(grads["x"], dz * s.reshape(1, -1, 1, 1))
    close(pgrads[("sc", 0)], (dz * x).sum(axis=(0, 2, 3)))
    close(pgrads[("sc", 1)], dz.sum(axis=(0, 2, 3)))


@pytest.mark.parametrize("op", ["SUM", "PROD", "MAX"])
def test_eltwise(op):
    a, b, c = (rng.normal(size=(2, 3, 4, 4)) for _ in range(3))
    b[0, 0] = a[0, 0]  # ties: Caffe's MAX gives the gradient to the first bottom
    coeff = "coeff: 1 coeff: -0.5 coeff: 2" if op == "SUM" else ""
    net = make_net(f'layer {{ name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y" '
                   f'eltwise_param {{ operation: {op} {coeff} }} }}', {"a": a.shape, "b": b.shape, "c": c.shape})
    dy = rng.normal(size=a.shape)
    y, g, _ = run(net, {"a": a, "b": b, "c": c}, "y", dy, grad_inputs=("a", "b", "c"))
    if op == "SUM":
        close(y, a - 0.5 * b + 2 * c)
        close(g["a"], dy), close(g["b"], -0.5 * dy), close(g["c"], 2 * dy)
    elif op == "PROD":
        close(y, a * b * c)
        close(g["a"], dy * b * c), close(g["b"], dy * a * c), close(g["c"], dy * a * b)
    else:
        stacked = np.stack([a, b, c])
        first = np.argmax(stacked, axis=0)  # numpy's argmax also returns the first maximum
        close(y, stacked.max(axis=0))
        for i, name in enumerate("abc"):
            close(g[name], np.where(first == i, dy, 0.0))
        assert np.all(g["b"][0, 0] == 0)


def test_concat_split_flatten_inner_product():
    a, b = rng.normal(size=(2, 3, 2, 2)), rng.normal(size=(2, 1, 2, 2))
    w, bias = rng.normal(size=(5, 16)), rng.normal(size=5)
    net = make_net('''layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "cat" }
        layer { name: "split" type: "Split" bottom: "cat" top: "s1" top: "s2" }
        layer { name: "flat" type: "Flatten" bottom: "s1" top: "flat" }
        layer { name: "ip" type: "InnerProduct" bottom: "s2" top: "ip" inner_product_param { num_output: 5 } }
        layer { name: "sum" type: "Eltwise" bottom: "ip" bottom: "ip" top: "y" }''', {"a": a.shape, "b": b.shape})
    set_blobs(net, "ip", w, bias)
    cat = np.concatenate([a, b], axis=1)
    dy = rng.normal(size=(2, 5))
    y, g, p = run(net, {"a": a, "b": b}, "y", dy, grad_inputs=("a", "b"))
    ip = cat.reshape(2, -1) @ w.T + bias
    close(y, 2 * ip)
    close(net(dict(a=torch.tensor(a), b=torch.tensor(b))).blobs["flat"].detach().numpy(), cat.reshape(2, -1))
    dcat = (2 * dy @ w).reshape(cat.shape)
    close(g["a"], dcat[:, :3]), close(g["b"], dcat[:, 3:])
    close(p[("ip", 0)], 2 * dy.T @ cat.reshape(2, -1))
    close(p[("ip", 1)], 2 * dy.sum(0))


def test_inner_product_axis_and_transpose():
    x = rng.normal(size=(2, 3, 4))
    w = rng.normal(size=(4, 6))  # transpose: K x N
    net = make_net('layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 6 axis: 2 '
                   'transpose: true bias_term: false } }', {"x": x.shape})
    set_blobs(net, "ip", w)
    dy = rng.normal(size=(2, 3, 6))
    y, g, p = run(net, {"x": x}, "y", dy)
    close(y, x @ w)
    close(g["x"], dy @ w.T)
    close(p[("ip", 0)], np.einsum("abk,abn->kn", x, dy))


def test_dropout_is_inverted_in_train_and_identity_in_test():
    x = rng.normal(size=(4, 8, 16, 16))
    layer = 'layer { name: "d" type: "Dropout" bottom: "x" top: "y" dropout_param { dropout_ratio: 0.3 } }'
    y, g, _ = run(make_net(layer, {"x": x.shape}), {"x": x}, "y", np.ones(x.shape))
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.01
    close(y[kept], x[kept] / 0.7)
    close(g["x"], kept / 0.7)
    y_test, _, _ = run(make_net(layer, {"x": x.shape}, "TEST"), {"x": x}, "y")
    close(y_test, x)


@pytest.mark.parametrize("mode,ignore", [("VALID", None), ("VALID", 2), ("FULL", 2), ("BATCH_SIZE", None), ("NONE", 1)])
def test_softmax_with_loss(mode, ignore):
    x = rng.normal(size=(3, 4, 2, 2))  # spatial: one label per position
    labels = rng.integers(0, 4, size=(3, 2, 2)).astype(np.float64)
    ig = f"ignore_label: {ignore}" if ignore is not None else ""
    net = make_net(f'layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" top: "prob" '
                   f'loss_param {{ normalization: {mode} {ig} }} }}', {"x": x.shape, "label": labels.shape})
    res = net({"x": torch.tensor(x, requires_grad=True), "label": torch.tensor(labels)})
    want_loss, want_grad = softmax_loss(x, labels, ignore, mode)
    close(res.loss.item(), want_loss)
    close(res.blobs["prob"].detach().numpy(), softmax(x))
    x_t = torch.tensor(x, requires_grad=True)
    net({"x": x_t, "label": torch.tensor(labels)}).loss.mul(0.5).backward()  # a loss weight scales the gradient
    close(x_t.grad.numpy(), 0.5 * want_grad)


def test_softmax_with_loss_legacy_normalize_false_is_batch_size():
    x = rng.normal(size=(3, 4, 2, 2))
    labels = rng.integers(0, 4, size=(3, 2, 2)).astype(np.float64)
    net = make_net('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" '
                   'loss_param { normalize: false } }', {"x": x.shape, "label": labels.shape})
    res = net({"x": torch.tensor(x), "label": torch.tensor(labels)})
    close(res.loss.item(), softmax_loss(x, labels, None, "BATCH_SIZE")[0])


@pytest.mark.parametrize("top_k,ignore", [(1, None), (2, None), (1, 0)])
def test_accuracy_counts_ties_for_the_prediction(top_k, ignore):
    x = np.round(rng.normal(size=(40, 5)))  # many ties
    labels = rng.integers(0, 5, size=40).astype(np.float64)
    ig = f"ignore_label: {ignore}" if ignore is not None else ""
    net = make_net(f'layer {{ name: "acc" type: "Accuracy" bottom: "x" bottom: "label" top: "acc" '
                   f'accuracy_param {{ top_k: {top_k} {ig} }} }}', {"x": x.shape, "label": labels.shape})
    res = net({"x": torch.tensor(x), "label": torch.tensor(labels)})
    assert res.blobs["acc"].item() == pytest.approx(accuracy(x, labels, top_k, ignore))
    assert res.loss.item() == 0  # accuracy is not a loss
    per_class_net = make_net(f'layer {{ name: "acc" type: "Accuracy" bottom: "x" bottom: "label" top: "acc" '
                             f'top: "per_class" accuracy_param {{ top_k: {top_k} {ig} }} }}',
                             {"x": x.shape, "label": labels.shape})
    per_class = per_class_net({"x": torch.tensor(x), "label": torch.tensor(labels)}).blobs["per_class"].numpy()
    for c in range(5):  # the optional second top: accuracy among the records of each class
        rows = labels == c
        want = accuracy(x[rows], labels[rows], top_k, ignore) if rows.any() and c != ignore else 0.0
        assert per_class[c] == pytest.approx(want)


def test_softmax_axis():
    x = rng.normal(size=(2, 3, 4))
    net = make_net('layer { name: "s" type: "Softmax" bottom: "x" top: "y" softmax_param { axis: 2 } }', {"x": x.shape})
    close(net({"x": torch.tensor(x)}).blobs["y"].detach().numpy(), softmax(x, axis=2))


def test_unsupported_layer_type_is_an_error_at_load_time():
    with pytest.raises(UserError, match="layer 'lrn1' has type 'LRN', which the torch engine does not support"):
        make_net('layer { name: "lrn1" type: "LRN" bottom: "x" top: "y" }', {"x": (1, 3, 4, 4)})


def test_shared_parameters_are_refused():
    layers = ''.join(f'layer {{ name: "ip{i}" type: "InnerProduct" bottom: "x" top: "y{i}" param {{ name: "w" }} '
                     'inner_product_param { num_output: 2 } } ' for i in range(2))
    with pytest.raises(UserError, match="shares parameter 'w'"):
        make_net(layers, {"x": (1, 3)})


def test_in_place_batchnorm_scale_pairs_fuse_and_others_do_not() -> None:
    from pathlib import Path

    from squeezecaffe.engines.torchcaffe.layers import BatchNorm, Scale
    from squeezecaffe.engines.torchcaffe.net import CaffeNet
    from squeezecaffe.engines.torchcaffe.rewrites import fuse_batchnorm_scale
    from squeezecaffe.proto import read_text

    deploy = read_text(Path(__file__).resolve().parent.parent / "prototxt" / "fullbypass8" / "deploy.prototxt",
                       pb.NetParameter)
    net = CaffeNet(deploy, "TEST")
    bns = [m for m in net.layers if isinstance(m, BatchNorm)]
    assert bns and all(m._affine for m in bns) and all(m.fused for m in net.layers if isinstance(m, Scale))
    # a BN whose output is a separate blob (observable by name) keeps its own Scale
    text = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }\n'
            'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "n" }\n'
            'layer { name: "sc" type: "Scale" bottom: "n" top: "n" scale_param { bias_term: true } }\n')
    other = CaffeNet(parse_text(text, pb.NetParameter), "TRAIN")
    assert fuse_batchnorm_scale(list(other.filtered.layer), list(other.layers)) == 0
    assert not other.layers[2].fused


IN_PLACE_NET = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } } }
layer { name: "c1" type: "Convolution" bottom: "x" top: "a" convolution_param { num_output: 4 kernel_size: 3 pad: 1
        weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "r1" type: "ReLU" bottom: "a" top: "a" }
layer { name: "c2" type: "Convolution" bottom: "a" top: "b" convolution_param { num_output: 4 kernel_size: 1
        weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "c3" type: "Convolution" bottom: "b" top: "d" convolution_param { num_output: 4 kernel_size: 1
        weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "r2" type: "ReLU" bottom: "b" top: "b" }
layer { name: "sum" type: "Eltwise" bottom: "b" bottom: "d" top: "s" }
layer { name: "r3" type: "ReLU" bottom: "x" top: "x" }
"""


def test_in_place_relus_overwrite_only_what_no_gradient_needs() -> None:
    """r1 follows its convolution directly: in place. r2's blob was read by c3 (which keeps it for its gradient)
    after its producer: a new tensor. r3's blob is the caller's input: never overwritten. The gradients are those of
    a net where no ReLU runs in place."""
    from squeezecaffe.engines.torchcaffe.fillers import fill_net
    from squeezecaffe.engines.torchcaffe.layers import ReLU
    from squeezecaffe.engines.torchcaffe.rewrites import allow_in_place_relu

    net = CaffeNet(parse_text(IN_PLACE_NET, pb.NetParameter), "TRAIN")
    fill_net(net, 3)
    assert [m.in_place for m in net.layers if isinstance(m, ReLU)] == [True, False, False]
    x = torch.from_numpy(np.random.default_rng(5).normal(size=(2, 3, 5, 5)).astype(np.float32))
    kept = x.clone()

    def grads() -> list[torch.Tensor]:
        for blob in net.parameters():
            blob.grad = None
        out = net({"x": x})
        (out.blobs["s"].square().sum() + out.blobs["x"].sum()).backward()
        return [blob.grad.clone() for blob in net.parameters()]

    fast = grads()
    assert torch.equal(x, kept)  # the input blob was not overwritten
    for m in net.layers:
        if isinstance(m, ReLU):
            m.in_place = False
    assert all(torch.equal(a, b) for a, b in zip(fast, grads(), strict=True))
    assert allow_in_place_relu(list(net.filtered.layer), list(net.layers)) == 1


def test_no_in_place_relu_for_a_negative_slope_or_a_pass_through_producer() -> None:
    """torch has no in-place backward for a negative slope; a one-bottom Eltwise hands its bottom through, so
    overwriting its top would overwrite the other blob too. Both train, with the other blob intact."""
    from squeezecaffe.engines.torchcaffe.fillers import fill_net
    from squeezecaffe.engines.torchcaffe.layers import ReLU

    text = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }\n'
            'layer { name: "c" type: "Convolution" bottom: "x" top: "a" convolution_param { num_output: 2 '
            'kernel_size: 1 weight_filler { type: "gaussian" std: 1 } } }\n'
            'layer { name: "leaky" type: "ReLU" bottom: "a" top: "a" relu_param { negative_slope: -0.5 } }\n'
            'layer { name: "c2" type: "Convolution" bottom: "a" top: "b" convolution_param { num_output: 2 '
            'kernel_size: 1 weight_filler { type: "gaussian" std: 1 } } }\n'
            'layer { name: "one" type: "Eltwise" bottom: "b" top: "e" }\n'
            'layer { name: "r" type: "ReLU" bottom: "e" top: "e" }\n')
    net = CaffeNet(parse_text(text, pb.NetParameter), "TRAIN")
    fill_net(net, 1)
    assert [m.in_place for m in net.layers if isinstance(m, ReLU)] == [False, False]
    x = torch.from_numpy(np.random.default_rng(2).normal(size=(2, 3, 4, 4)).astype(np.float32))
    out = net({"x": x})
    assert (out.blobs["b"] < 0).any() and torch.equal(out.blobs["e"], out.blobs["b"].clamp(min=0))
    out.blobs["e"].sum().backward()
