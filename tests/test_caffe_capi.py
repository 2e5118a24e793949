"""Our C interface to Caffe (libsqueezecaffe_capi.so through ctypes), against pycaffe on the same libcaffe.

Both bindings drive one copy of the library in this process, so every figure must be identical to the bit: the same
filler draws from the same seed, the same forward, backward and solver steps, the same snapshots. This is what the
CUDA bundle runs on a GPU machine, where pycaffe's extension cannot be imported (another Python)."""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import numpy as np
import pytest

from squeezecaffe.caffe_build.locate import find_build
from squeezecaffe.cli import main
from squeezecaffe.engines.pycaffe import runtime
from squeezecaffe.engines.pycaffe.capi import CaffeLibrary
from squeezecaffe.engines.pycaffe.runtime import GlogTap, import_caffe
from tests.test_caffe_parity import caffe_eval_equals_torch_eval

pytestmark = pytest.mark.caffe

NET = """force_backward: true
layer { name: "in" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 3 dim: 9 dim: 9 } shape { dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 }
                            bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""
SOLVER = ('type: "Nesterov" base_lr: 0.05 lr_policy: "poly" power: 1.0 momentum: 0.9 weight_decay: 0.0005 '
          'max_iter: 100 display: 1 random_seed: 7 snapshot_prefix: "{prefix}"\nnet: "{net}"\n')


@pytest.fixture(scope="module")
def bindings():
    """(pycaffe module, C interface) over the same libcaffe."""
    build = find_build()
    pycaffe = import_caffe()
    if isinstance(pycaffe, CaffeLibrary):
        pytest.skip("this process already uses the C interface (SQUEEZECAFFE_CAFFE_BINDING=capi)")
    return pycaffe, CaffeLibrary(build.capi_library)


def _inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(4, 3, 9, 9)).astype(np.float32), rng.integers(0, 5, size=4).astype(np.float32)


def _net(caffe, folder: Path, phase: str = "TRAIN"):
    path = folder / "net.prototxt"
    path.write_text(NET)
    caffe.set_mode_cpu()
    caffe.set_random_seed(11)
    with GlogTap(folder / "caffe.log"):
        return caffe.Net(str(path), getattr(caffe, phase))


def test_nets_are_the_same_through_both_bindings(bindings, tmp_path: Path) -> None:
    ours, theirs = (_net(caffe, tmp_path) for caffe in reversed(bindings))
    assert list(ours.blobs) == list(theirs.blobs) and list(ours.params) == list(theirs.params)
    assert ours.inputs == list(theirs.inputs) == ["data", "label"] and ours.outputs == list(theirs.outputs)
    for name in theirs.params:  # the same seed: the same filler draws
        for a, b in zip(ours.params[name], theirs.params[name], strict=True):
            np.testing.assert_array_equal(a.data, b.data)
    x, y = _inputs()
    for net in (ours, theirs):
        net.blobs["data"].data[...] = x
        net.blobs["label"].data[...] = y
        net.clear_param_diffs()
        with GlogTap(tmp_path / "caffe.log"):
            net.forward()
            net.backward()
    assert float(ours.blobs["loss"].data) == float(theirs.blobs["loss"].data) > 0
    for name in theirs.blobs:
        np.testing.assert_array_equal(ours.blobs[name].data, theirs.blobs[name].data, err_msg=name)
        np.testing.assert_array_equal(ours.blobs[name].diff, theirs.blobs[name].diff, err_msg=name)
    for name in theirs.params:
        for a, b in zip(ours.params[name], theirs.params[name], strict=True):
            np.testing.assert_array_equal(a.diff, b.diff, err_msg=name)
    assert np.abs(ours.params["conv"][0].diff).sum() > 0  # the backward reached the first layer


def test_reshape_save_copy_and_share(bindings, tmp_path: Path) -> None:
    _, caffe = bindings
    net = _net(caffe, tmp_path, "TEST")
    net.blobs["data"].reshape(2, 3, 9, 9)
    net.blobs["label"].reshape(2)
    net.reshape()
    assert net.blobs["fc"].data.shape == (2, 5) and net.blobs["data"].count == 2 * 3 * 81
    net.save(str(tmp_path / "w.caffemodel"))
    caffe.set_random_seed(99)  # other filler draws ...
    with GlogTap(tmp_path / "caffe.log"):
        other = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST)
    assert not np.array_equal(other.params["fc"][0].data, net.params["fc"][0].data)
    other.copy_from(str(tmp_path / "w.caffemodel"))  # ... replaced by the saved weights
    np.testing.assert_array_equal(other.params["fc"][0].data, net.params["fc"][0].data)
    with GlogTap(tmp_path / "caffe.log"):
        loaded = caffe.Net(str(tmp_path / "net.prototxt"), str(tmp_path / "w.caffemodel"), caffe.TEST)
        third = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST)
    np.testing.assert_array_equal(loaded.params["conv"][0].data, net.params["conv"][0].data)
    third.share_with(net)
    net.params["conv"][0].data[0, 0, 0, 0] = 123.0  # shared memory: the change shows in the other net
    assert third.params["conv"][0].data[0, 0, 0, 0] == 123.0
    # lifetimes: a view keeps the net's C handle; the Python wrappers form no cycle, so the net is freed by
    # reference counting alone the moment nothing uses it (no garbage-collector pass holding Caffe's memory)
    view, handle, wrapper = net.blobs["fc"].data, net._owned, weakref.ref(net)
    del net
    assert wrapper() is None and handle.value and view.shape == (2, 5)
    freed = weakref.ref(handle)
    del handle, view, third, other, loaded
    assert freed() is None


def test_solvers_step_snapshot_and_restore_the_same(bindings, tmp_path: Path) -> None:
    x, y = _inputs(1)
    weights, states = [], []
    for k, caffe in enumerate(bindings):
        folder = tmp_path / f"b{k}"
        folder.mkdir()
        (folder / "net.prototxt").write_text(NET)
        (folder / "solver.prototxt").write_text(SOLVER.format(prefix=folder / "snap", net=folder / "net.prototxt"))
        caffe.set_mode_cpu()
        caffe.set_random_seed(5)
        with GlogTap(folder / "caffe.log"):
            solver = caffe.get_solver(str(folder / "solver.prototxt"))
            solver.net.blobs["data"].data[...] = x
            solver.net.blobs["label"].data[...] = y
            solver.step(3)
            solver.snapshot()
        assert solver.iter == 3 and len(solver.test_nets) == 0
        weights.append({n: [b.data.copy() for b in bs] for n, bs in solver.net.params.items()})
        states.append(folder / "snap_iter_3.solverstate")
        assert (folder / "snap_iter_3.caffemodel").is_file() and states[-1].is_file()
    for name in weights[0]:
        for a, b in zip(weights[0][name], weights[1][name], strict=True):
            np.testing.assert_array_equal(a, b, err_msg=name)
    _, caffe = bindings
    with GlogTap(tmp_path / "caffe.log"):
        resumed = caffe.get_solver(str(tmp_path / "b1" / "solver.prototxt"))
        resumed.restore(str(states[1]))
    assert resumed.iter == 3
    np.testing.assert_array_equal(resumed.net.params["fc"][0].data, weights[1]["fc"][0])


def test_errors_are_exceptions_naming_the_file(bindings, tmp_path: Path) -> None:
    _, caffe = bindings
    with pytest.raises(RuntimeError, match=r"nowhere\.prototxt: cannot be read"):
        caffe.Net(str(tmp_path / "nowhere.prototxt"), caffe.TEST)
    with pytest.raises(RuntimeError, match=r"missing\.solverstate: cannot be read"):
        net = _net(caffe, tmp_path)
        del net
        (tmp_path / "solver.prototxt").write_text(SOLVER.format(prefix=tmp_path / "s", net=tmp_path / "net.prototxt"))
        with GlogTap(tmp_path / "caffe.log"):
            solver = caffe.get_solver(str(tmp_path / "solver.prototxt"))
        solver.restore(str(tmp_path / "missing.solverstate"))
    with pytest.raises(RuntimeError, match=r"absent\.caffemodel: cannot be read"):
        _net(caffe, tmp_path).copy_from(str(tmp_path / "absent.caffemodel"))
    assert caffe.cuda_built() == find_build().cuda
    if not caffe.cuda_built():
        with pytest.raises(RuntimeError, match="CPU-only"):
            caffe.cuda_device_count()


@pytest.mark.slow
def test_the_caffe_engine_trains_and_evaluates_through_the_c_interface(data: Path, tmp_path: Path,
                                                                       monkeypatch) -> None:
    """`train --engine caffe` and `eval --engine caffe` with SQUEEZECAFFE_CAFFE_BINDING=capi (what a bundle uses):
    the run completes, and Caffe's figures on its own weights equal the torch runtime's."""
    monkeypatch.setenv(runtime.BINDING, "capi")
    monkeypatch.setattr(runtime, "_caffe", None)
    monkeypatch.setattr(runtime, "_caffe_build", None)
    assert isinstance(import_caffe(), CaffeLibrary)
    run_dir = tmp_path / "run"
    assert main(["train", "cifar_resnet_1111", "--data", str(data), "--engine", "caffe", "--batch-size", "16",
                 "--epochs", "2", "--quiet", "--run-dir", str(run_dir)]) == 0
    assert json.loads((run_dir / "run.json").read_text())["engine"] == "caffe"
    caffe_eval_equals_torch_eval(run_dir, tmp_path)
