"""The torch engine against real Caffe's golden outputs (tests/fixtures/caffe, see its README)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from squeezecaffe.caffe_rules.blobs import blob_values, read_caffemodel
from squeezecaffe.engines.torchcaffe.net import load_net
from squeezecaffe.engines.torchcaffe.solver import Solver
from squeezecaffe.engines.torchcaffe.weights import load_caffemodel
from squeezecaffe.proto import pb, read_binary
from tests.conftest import FIXTURES

LAYERS = FIXTURES / "layers"
SOLVER = FIXTURES / "solver"


def _assert_close(got: np.ndarray, want: np.ndarray, what: str, rtol: float = 1e-5) -> None:
    # relative to the blob's magnitude: some Caffe gradients are float32 rounding noise around zero
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-3)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=what)


def _zoo(phase: str):
    net = load_net(LAYERS / "zoo.prototxt", phase)
    load_caffemodel(net, LAYERS / "zoo.caffemodel")
    inp = np.load(LAYERS / "zoo_input.npz")
    return net, {"data": torch.tensor(inp["data"]), "label": torch.tensor(inp["label"])}


def _param(net, key: str) -> torch.Tensor:
    layer, index = key.split("/")
    return net.layers[net.layer_names.index(layer)].blobs[int(index)]


def test_zoo_train_forward_backward_matches_caffe():
    net, inputs = _zoo("TRAIN")
    ref = np.load(LAYERS / "zoo_train.npz")
    res = net(inputs)
    for t in res.blobs.values():
        if t.requires_grad:
            t.retain_grad()
    res.loss.backward()
    checked = 0
    for key in ref.files:
        kind, name = key.split("/", 1)
        if kind == "blob" and name in res.blobs:
            _assert_close(res.blobs[name].detach().numpy(), ref[key], key)
        elif kind == "diff" and name in res.blobs and res.blobs[name].grad is not None:
            _assert_close(res.blobs[name].grad.numpy(), ref[key], key)
        elif kind == "param":  # BatchNorm's running sums after this forward's update included
            _assert_close(_param(net, name).detach().numpy(), ref[key], key)
        elif kind == "pdiff":
            grad = _param(net, name).grad
            _assert_close(np.zeros_like(ref[key]) if grad is None else grad.numpy(), ref[key], key)
        else:
            continue  # Caffe's implicit split blobs have no name of ours; their consumers are checked
        checked += 1
    assert checked >= 60  # 66 of the fixture's 84 arrays (the rest are split copies)
    assert float(res.loss.detach()) == pytest.approx(float(ref["blob/loss"]) + 0.5 * float(ref["blob/loss2"]), rel=1e-6)


def test_zoo_test_forward_matches_caffe():
    net, inputs = _zoo("TEST")
    ref = np.load(LAYERS / "zoo_test.npz")
    with torch.no_grad():
        res = net(inputs)
    names = [k.split("/", 1)[1] for k in ref.files if k.startswith("blob/") and k[5:] in res.blobs]
    assert {"bn1", "pool_max", "pool_ave", "emax", "prob", "acc", "loss2"} <= set(names)
    for name in names:
        _assert_close(res.blobs[name].numpy(), ref["blob/" + name], name)
    # TEST uses the stored statistics (divided by the 1.7 scale factor) and leaves them alone
    _assert_close(_param(net, "bn1/2").detach().numpy(), ref["param/bn1/2"], "bn1 factor")


def _batches_feed():
    batches = np.load(SOLVER / "batches.npz")

    def feed(phase, it, k):
        return {"data": torch.tensor(batches[f"x{it}"]), "label": torch.tensor(batches[f"y{it}"])}

    return feed


def test_nesterov_poly_trace_with_snapshot_restore_and_lr_change_matches_caffe(tmp_path):
    """Iterations 0-9 at base_lr 0.05, snapshot, restore into a base_lr 0.01 solver, iterations 10-19."""
    trace = json.loads((SOLVER / "trace.json").read_text())["losses"]
    feed = _batches_feed()
    first = Solver.from_file(SOLVER / "solver.prototxt", feed=feed)
    first.sp.snapshot_prefix = str(tmp_path / "tiny")
    load_caffemodel(first.train_net, SOLVER / "tiny_iter_0.caffemodel")
    losses = []
    first.step(10, lambda s: losses.append(float(s.loss)))
    model, state = first.snapshot()
    assert model.name == "tiny_iter_10.caffemodel" and state.name == "tiny_iter_10.solverstate"

    # our snapshot equals Caffe's at iteration 10
    ours, theirs = read_binary(state, pb.SolverState), read_binary(SOLVER / "tiny_iter_10.solverstate", pb.SolverState)
    assert ours.iter == theirs.iter == 10 and len(ours.history) == len(theirs.history) == 8
    for a, b in zip(ours.history, theirs.history, strict=True):
        _assert_close(blob_values(a), blob_values(b), "history@10", 1e-4)

    second = Solver.from_file(SOLVER / "solver_lr_scaled.prototxt", feed=feed)
    second.restore(state)
    second.step(10, lambda s: losses.append(float(s.loss)))
    np.testing.assert_allclose(losses, trace, rtol=1e-4)

    final = read_caffemodel(SOLVER / "tiny_iter_20.caffemodel")
    for layer in final.layer:
        for i, blob in enumerate(layer.blobs):
            _assert_close(_param(second.train_net, f"{layer.name}/{i}").detach().numpy().ravel(), blob_values(blob),
                          f"{layer.name}/{i}@20", 1e-4)
    caffe_state = read_binary(SOLVER / "tiny_iter_20.solverstate", pb.SolverState)
    for h, blob in zip(second.history, caffe_state.history, strict=True):
        _assert_close(h.numpy().ravel(), blob_values(blob), "history@20", 1e-4)


def test_restoring_caffes_own_solverstate_continues_its_run():
    second = Solver.from_file(SOLVER / "solver_lr_scaled.prototxt", feed=_batches_feed())
    second.restore(SOLVER / "tiny_iter_10.solverstate")  # learned_net is relative: found beside the state
    assert second.iter == 10
    losses = []
    second.step(10, lambda s: losses.append(float(s.loss)))
    trace = json.loads((SOLVER / "trace.json").read_text())["losses"]
    np.testing.assert_allclose(losses, trace[10:], rtol=1e-4)
