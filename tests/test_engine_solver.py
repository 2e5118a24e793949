"""The torch engine's Solver against a hand-written NumPy re-implementation of Caffe's updates,
and exact snapshot/restore on a real LMDB-fed net."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from squeezecaffe.data_tools.convert import ConvertOptions, build_lmdb
from squeezecaffe.engines.torchcaffe.options import EngineOptions
from squeezecaffe.engines.torchcaffe.solver import Solver
from squeezecaffe.errors import UserError
from squeezecaffe.proto import parse_text, pb, read_binary
from tests.datasets import write_class_folders

# A two-layer perceptron whose gradient is easy to write by hand.
MLP = '''
layer { name: "in" type: "Input" top: "x" top: "label"
        input_param { shape { dim: 4 dim: 5 } shape { dim: 4 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "y"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "y" bottom: "label" top: "loss" }
'''


def mlp_grads(params, x, labels):
    w1, b1, w2, b2 = params
    h_pre = x @ w1.T + b1
    h = np.maximum(h_pre, 0)
    y = h @ w2.T + b2
    p = np.exp(y - y.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    n = len(x)
    loss = -np.log(p[np.arange(n), labels]).mean()
    dy = p.copy()
    dy[np.arange(n), labels] -= 1
    dy /= n
    dh = (dy @ w2) * (h_pre > 0)
    return loss, [dh.T @ x, dh.sum(0), dy.T @ h, dy.sum(0)]


def summed_grads(params, batches, it):
    """The gradients of both iter_size passes of iteration `it`, summed (before Caffe's division)."""
    total = [np.zeros_like(p) for p in params]
    for k in range(2):
        _, g = mlp_grads(params, *batches[(it, k)])
        total = [a + b for a, b in zip(total, g, strict=True)]
    return total


def caffe_reference(kind, params, batches, sp, lr_changes):
    """Caffe's SGDSolver arithmetic in float64: Normalize, Regularize, ComputeUpdateValue, Update."""
    lr_mult, decay_mult = [1, 2, 1, 1], [1, 0, 1, 1]
    params = [p.copy() for p in params]
    hist = [np.zeros_like(p) for p in params]
    base_lr = sp["base_lr"]
    losses = []
    for it in range(20):
        base_lr = lr_changes.get(it, base_lr)
        rate = base_lr * (1 - it / sp["max_iter"]) ** sp["power"]
        acc = [np.zeros_like(p) for p in params]
        loss = 0.0
        for k in range(sp["iter_size"]):
            x, lab = batches[(it, k)]
            step_loss, grads = mlp_grads(params, x, lab)
            loss += step_loss / sp["iter_size"]
            acc = [a + g for a, g in zip(acc, grads, strict=True)]
        losses.append(loss)
        for i in range(4):
            diff = acc[i] / sp["iter_size"] + sp["weight_decay"] * decay_mult[i] * params[i]
            local = rate * lr_mult[i]
            if kind == "SGD":
                hist[i] = sp["momentum"] * hist[i] + local * diff
                update = hist[i]
            else:  # Nesterov
                old = hist[i]
                hist[i] = sp["momentum"] * hist[i] + local * diff
                update = (1 + sp["momentum"]) * hist[i] - sp["momentum"] * old
            params[i] = params[i] - update
    return params, hist, losses


def mlp_solver(kind: str, extra: str = "", **options) -> Solver:
    text = (f'type: "{kind}" base_lr: 0.1 lr_policy: "poly" power: 0.9 max_iter: 40 momentum: 0.9 '
            f'weight_decay: 0.01 iter_size: 2 random_seed: 3 {extra}')
    sp = parse_text(text, pb.SolverParameter)
    sp.net_param.CopyFrom(parse_text(MLP, pb.NetParameter))
    rng = np.random.default_rng(1)
    batches = {(it, k): (rng.normal(size=(4, 5)), rng.integers(0, 3, 4)) for it in range(20) for k in range(2)}

    def feed(phase, it, k):
        x, lab = batches[(it, k)]
        return {"x": torch.tensor(x), "label": torch.tensor(lab, dtype=torch.float64)}

    solver = Solver(sp, feed=feed, options=EngineOptions(dtype="float64", **options))
    solver.batches = batches
    return solver


def solver_params(solver):
    return [b.detach().numpy().copy() for _, _, b, _, _ in solver.params]


@pytest.mark.parametrize("kind", ["SGD", "Nesterov"])
def test_sgd_and_nesterov_with_poly_and_a_mid_run_lr_change_match_caffe_arithmetic(kind):
    solver = mlp_solver(kind)
    start = solver_params(solver)
    losses = []
    solver.step(10, lambda s: losses.append(float(s.loss)))
    solver.base_lr = 0.02  # an LR drop: the momentum history still carries steps taken at 0.1
    solver.step(10, lambda s: losses.append(float(s.loss)))
    f32 = lambda v: float(np.float32(v))  # noqa: E731 - the solver's fields are float32 in the schema
    sp = dict(base_lr=f32(0.1), max_iter=40, power=f32(0.9), momentum=f32(0.9), weight_decay=f32(0.01), iter_size=2)
    want_params, want_hist, want_losses = caffe_reference(kind, start, solver.batches, sp, {10: 0.02})
    np.testing.assert_allclose(losses, want_losses, rtol=1e-6)
    for got, want in zip(solver_params(solver), want_params, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    for got, want in zip(solver.history, want_hist, strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("kind", ["SGD", "Nesterov"])
def test_the_grouped_update_is_the_per_blob_update_bit_for_bit(kind):
    """SGD and Nesterov with L2 decay and no constraints take the multi-tensor path (_grouped_update); an empty
    constraint set sends the same solver down the per-blob path of compute_update. Same weights and histories, to
    the bit, after 20 iterations with iter_size 2 and a rate change."""
    from squeezecaffe.engines.torchcaffe.constraints import Constraints

    grouped, per_blob = mlp_solver(kind), mlp_solver(kind)
    per_blob.set_constraints(Constraints([]))
    for solver in (grouped, per_blob):
        solver.step(10)
        solver.base_lr = 0.02
        solver.step(10)
    for a, b in zip([*solver_params(grouped), *(h.numpy() for h in grouped.history)],
                    [*solver_params(per_blob), *(h.numpy() for h in per_blob.history)], strict=True):
        assert np.array_equal(a, b)
    assert not np.array_equal(solver_params(grouped)[0], mlp_solver(kind).params[0][2].detach().numpy())


def one_step_reference(kind, sp, w, g, hist, rate, it):
    """One ComputeUpdateValue of the adaptive solvers, from Caffe's formulas (g already regularised)."""
    if kind == "AdaGrad":
        hist[0] = hist[0] + g * g
        return rate * g / (np.sqrt(hist[0]) + sp.delta)
    if kind == "RMSProp":
        hist[0] = sp.rms_decay * hist[0] + (1 - sp.rms_decay) * g * g
        return rate * g / (np.sqrt(hist[0]) + sp.delta)
    if kind == "AdaDelta":
        hist[0] = sp.momentum * hist[0] + (1 - sp.momentum) * g * g
        step = g * np.sqrt((hist[1] + sp.delta) / (hist[0] + sp.delta))
        hist[1] = sp.momentum * hist[1] + (1 - sp.momentum) * step * step
        return rate * step
    hist[0] = sp.momentum * hist[0] + (1 - sp.momentum) * g
    hist[1] = sp.momentum2 * hist[1] + (1 - sp.momentum2) * g * g
    t = it + 1
    correction = math.sqrt(1 - sp.momentum2**t) / (1 - sp.momentum**t)
    return rate * correction * hist[0] / (np.sqrt(hist[1]) + sp.delta)


@pytest.mark.parametrize("kind", ["AdaGrad", "RMSProp", "AdaDelta", "Adam"])
def test_adaptive_solvers_follow_caffes_formulas(kind):
    solver = mlp_solver(kind, "delta: 1e-6 momentum2: 0.99")
    sp = solver.sp
    sp.momentum = {"AdaGrad": 0.0, "RMSProp": 0.0, "AdaDelta": 0.95, "Adam": 0.9}[kind]  # Caffe wants 0 for the first two
    params = solver_params(solver)
    slots = 2 if kind in ("AdaDelta", "Adam") else 1
    hist = [[np.zeros_like(p) for _ in range(slots)] for p in params]
    for it in range(4):
        grads = summed_grads(params, solver.batches, it)
        rate = sp.base_lr * (1 - it / sp.max_iter) ** sp.power
        for i, (lr_mult, decay_mult) in enumerate([(1, 1), (2, 0), (1, 1), (1, 1)]):
            g = grads[i] / 2 + sp.weight_decay * decay_mult * params[i]
            params[i] = params[i] - one_step_reference(kind, sp, params[i], g, hist[i], rate * lr_mult, it)
        solver.step(1)
    for got, want in zip(solver_params(solver), params, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-10)
    assert len(solver.history) == slots * 4


def test_clip_gradients_scales_the_accumulated_diffs_before_normalisation():
    solver = mlp_solver("SGD", "clip_gradients: 0.05")
    params = solver_params(solver)
    grads = summed_grads(params, solver.batches, 0)
    norm = math.sqrt(sum(float((g * g).sum()) for g in grads))
    assert norm > 0.05  # the clip is active
    grads = [g * 0.05 / norm for g in grads]
    solver.step(1)
    rate = 0.1
    for i, (got, (lr_mult, decay_mult)) in enumerate(zip(solver_params(solver), [(1, 1), (2, 0), (1, 1), (1, 1)], strict=True)):
        want = params[i] - rate * lr_mult * (grads[i] / 2 + 0.01 * decay_mult * params[i])
        np.testing.assert_allclose(got, want, rtol=1e-6)  # float32 solver constants


def test_l1_regularisation_adds_the_sign():
    solver = mlp_solver("SGD", 'regularization_type: "L1"')
    params = solver_params(solver)
    grads = summed_grads(params, solver.batches, 0)
    solver.step(1)
    want = params[0] - 0.1 * (grads[0] / 2 + 0.01 * np.sign(params[0]))
    np.testing.assert_allclose(solver_params(solver)[0], want, rtol=1e-6)


def test_unknown_solver_type_and_regularisation_are_one_line_errors():
    with pytest.raises(UserError, match="solver type 'Lion' is not supported"):
        mlp_solver("Lion")
    with pytest.raises(UserError, match="regularization_type 'L3'"):
        mlp_solver("SGD", 'regularization_type: "L3"')


# --------------------------------------------------------------------------- an LMDB-fed net, end to end

TRAIN_VAL = '''
name: "small"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { mirror: true crop_size: 12 mean_value: 100 mean_value: 110 mean_value: 120 scale: 0.02 }
        data_param { source: "DATA/train_lmdb" batch_size: 4 backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
        transform_param { crop_size: 12 mean_value: 100 mean_value: 110 mean_value: 120 scale: 0.02 }
        data_param { source: "DATA/val_lmdb" batch_size: 3 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3
        pad: 1 weight_filler { type: "msra" } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1"
        param { lr_mult: 0 decay_mult: 0 } param { lr_mult: 0 decay_mult: 0 } param { lr_mult: 0 decay_mult: 0 } }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "drop" type: "Dropout" bottom: "pool1" top: "pool1" dropout_param { dropout_ratio: 0.2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool1" top: "ip" inner_product_param { num_output: 3
        weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy" include { phase: TEST } }
'''


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    src = write_class_folders(root / "images", classes=3, per_class=7, size=(16, 16))
    build_lmdb(src, root / "data", ConvertOptions(jobs=1, progress=False), val_fraction=0.3)
    (root / "train_val.prototxt").write_text(TRAIN_VAL.replace("DATA", str(root / "data")))
    return root


def write_solver(root, name: str, extra: str = "", kind: str = "Nesterov") -> str:
    path = root / f"{name}.prototxt"
    path.write_text(f'net: "{root / "train_val.prototxt"}" type: "{kind}" base_lr: 0.05 lr_policy: "poly" power: 1 '
                    f'max_iter: 12 momentum: 0.9 weight_decay: 0.0005 iter_size: 2 test_iter: 2 test_interval: 3 '
                    f'test_initialization: false snapshot: 3 snapshot_prefix: "{root / name}" random_seed: 5 {extra}')
    return str(path)


def all_blobs(solver):
    return [b.detach().clone() for _, _, b, _, _ in solver.params]


def test_snapshot_restore_continues_exactly_as_an_uninterrupted_run(small_run):
    full = Solver.from_file(write_solver(small_run, "full"))
    tests = []
    full.test_callback = lambda it, res: tests.append((it, res))
    full.step(9)
    assert [it for it, _ in tests] == [3, 6]
    assert set(tests[0][1][0]) == {"loss", "accuracy"}

    first = Solver.from_file(write_solver(small_run, "part"))
    first.step(3)  # snapshot: 3 writes part_iter_3.*
    state = small_run / "part_iter_3.solverstate"
    assert state.is_file() and (small_run / "part_iter_3.caffemodel").is_file()
    assert read_binary(state, pb.SolverState).iter == 3
    resumed = Solver.from_file(write_solver(small_run, "part"), options=EngineOptions(workers=2))
    resumed.restore(state)
    resumed.step(6)
    for a, b in zip(all_blobs(full), all_blobs(resumed), strict=True):
        assert torch.equal(a, b)  # bit for bit, BatchNorm statistics included
    for a, b in zip(full.history, resumed.history, strict=True):
        assert torch.equal(a, b)


def test_solve_runs_to_max_iter_with_final_snapshot_and_test(small_run):
    solver = Solver.from_file(write_solver(small_run, "solve", "snapshot_after_train: true"))
    solver.sp.max_iter = 4
    tests = []
    solver.solve(test_callback=lambda it, res: tests.append(it))
    assert solver.iter == 4
    assert (small_run / "solve_iter_3.caffemodel").is_file() and (small_run / "solve_iter_4.solverstate").is_file()
    assert tests == [3]  # 4 % test_interval != 0: no final test


def test_restore_refuses_a_state_from_another_solver_type(small_run):
    Solver.from_file(write_solver(small_run, "nest")).step(3)
    adam = Solver.from_file(write_solver(small_run, "adam", kind="Adam"))
    with pytest.raises(UserError, match="history blobs, this Adam solver on this net needs"):
        adam.restore(small_run / "nest_iter_3.solverstate")
