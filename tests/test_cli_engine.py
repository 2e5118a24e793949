"""`forward`, `time` and `solve` from the command line (in-process)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from squeezecaffe.data_tools.convert import ConvertOptions, build_lmdb
from squeezecaffe.netgen.registry import get_model
from squeezecaffe.proto import pb, read_binary
from squeezecaffe.solvers.generate import generate, write_generated
from tests.conftest import FIXTURES
from tests.datasets import write_class_folders
from tests.test_cli import run


def test_forward_reproduces_caffes_zoo_outputs(capsys, tmp_path: Path) -> None:
    inputs = np.load(FIXTURES / "layers" / "zoo_input.npz")
    np.save(tmp_path / "data.npy", inputs["data"])
    np.save(tmp_path / "label.npy", inputs["label"])
    out = tmp_path / "out.npz"
    code, stdout, _ = run(capsys, "forward", str(FIXTURES / "layers" / "zoo.prototxt"), "--weights",
                          str(FIXTURES / "layers" / "zoo.caffemodel"), "--input", f"data={tmp_path / 'data.npy'}",
                          "--input", f"label={tmp_path / 'label.npy'}", "--output", str(out))
    assert code == 0 and "wrote" in stdout
    got, ref = np.load(out), np.load(FIXTURES / "layers" / "zoo_test.npz")
    for name in ("prob", "emax", "pool_ave", "loss2"):
        assert got[name].dtype == np.float32
        np.testing.assert_allclose(got[name], ref["blob/" + name], rtol=1e-5, atol=1e-6)


def test_forward_without_weights_is_seeded_and_blobs_select(capsys, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32))
    outs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.npz"
        code, _, _ = run(capsys, "forward", "cifar_resnet_1111", "--input", f"data={tmp_path / 'x.npy'}",
                         "--output", str(out), "--blobs", "prob,conv1", "--seed", "5")
        assert code == 0
        outs.append(np.load(out))
    assert sorted(outs[0].files) == ["conv1", "prob"]
    assert outs[0]["prob"].shape == (2, 10)
    np.testing.assert_array_equal(outs[0]["conv1"], outs[1]["conv1"])


def test_forward_errors_are_one_line(capsys, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 32, 32), np.float32))
    code, _, err = run(capsys, "forward", "cifar_resnet_1111", "--input", f"img={tmp_path / 'x.npy'}",
                       "--output", str(tmp_path / "o.npz"))
    assert code == 2 and "the net has no input blob 'img'" in err and err.count("\n") == 1
    code, _, err = run(capsys, "forward", "cifar_resnet_1111", "--output", str(tmp_path / "o.npz"))
    assert code == 2 and "input blob 'data' was not given" in err
    code, _, err = run(capsys, "forward", "cifar_resnet_1111", "--input", f"data={tmp_path / 'missing.npy'}",
                       "--output", str(tmp_path / "o.npz"))
    assert code == 2 and "missing.npy: file not found" in err
    assert not (tmp_path / "o.npz").exists()


def test_time_reports_every_layer_and_throughput(capsys) -> None:
    code, out, _ = run(capsys, "time", "cifar_resnet_1111", "--batch-size", "2", "--iterations", "1")
    assert code == 0
    assert "Convolution" in out and "BatchNorm" in out  # one row per layer
    assert "SoftmaxWithLoss" in out and "training throughput:" in out and "images/s" in out


def test_solve_trains_resumes_and_snapshots(capsys, tmp_path: Path) -> None:
    src = write_class_folders(tmp_path / "images", classes=2, per_class=6, size=(16, 16))
    build_lmdb(src, tmp_path / "data", ConvertOptions(jobs=1, progress=False), val_fraction=0.25)
    spec = get_model("cifar_resnet_1111")
    from squeezecaffe.solvers.settings import resolve

    cfg, sched = resolve(spec, data_dir=str(tmp_path / "data"), batch_size=4, test_batch_size=3, epochs=1)
    out = tmp_path / "gen"
    model = generate(spec, out, cfg, sched, {"display": "1"}, snapshot_prefix=str(out / "snap"))
    write_generated(model, out)
    code, stdout, err = run(capsys, "solve", str(out / "solver.prototxt"), "--iterations", "2", "--workers", "0")
    assert code == 0, err
    assert "Iteration 0, loss =" in stdout and "Iteration 1, loss =" in stdout
    assert read_binary(out / "snap_iter_2.solverstate", pb.SolverState).iter == 2
    code, stdout, err = run(capsys, "solve", str(out / "solver.prototxt"), "--snapshot", str(out / "snap_iter_2.solverstate"),
                            "--iterations", "1", "--workers", "0")
    assert code == 0, err
    assert "restored" in stdout and "Iteration 2, loss =" in stdout
    assert (out / "snap_iter_3.caffemodel").is_file()


@pytest.mark.parametrize("argv,message", [
    (["solve", "nope.prototxt"], "nope.prototxt: file not found"),
    (["time", "no_such_model"], "no_such_model"),
])
def test_engine_verbs_reject_bad_targets(capsys, argv, message) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err
