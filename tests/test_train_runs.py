"""`squeezecaffe train` end to end on a tiny generated dataset: accuracy, logs, plots, snapshots, resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from squeezecaffe.cli import main
from squeezecaffe.engines.torchcaffe.net import load_net
from squeezecaffe.engines.torchcaffe.weights import load_caffemodel
from squeezecaffe.proto import pb, read_binary
from squeezecaffe.train.logs import read_log
from squeezecaffe.train.rundir import latest_complete
from tests.conftest import TRAIN
from tests.test_cli import run

# `data` (4 classes of 32x32 JPEGs, a quarter held out) and `finished_run` (3 epochs of TRAIN on it)
# are session fixtures in conftest.py, shared with the eval/classify/report tests.


def test_three_epochs_learn_and_leave_logs_plots_and_loadable_snapshots(finished_run: Path):
    rows = read_log(finished_run / "log.csv")
    epochs = [r for r in rows if r["Phase"] == "val"]
    assert [r["Epoch"] for r in epochs] == ["1", "2", "3"]
    assert float(epochs[-1]["val_top1"]) >= 0.6  # chance is 0.25
    assert {"NumIters", "Seconds", "LearningRate", "loss"} <= set(rows[0])
    assert (finished_run / "curves.png").stat().st_size > 10_000
    assert "epoch 3/3" in (finished_run / "train.log").read_text()
    provenance = json.loads((finished_run / "run.json").read_text())
    assert provenance["engine"] == "torch" and provenance["torch"] == torch.__version__
    info = latest_complete(str(finished_run / "snapshots" / "cifar_resnet_1111"))
    assert info["iter"] == 24 and info["controller"]["epochs"] == 3
    net = load_net(finished_run / "deploy.prototxt")
    assert not load_caffemodel(net, finished_run / "best.caffemodel").missing
    assert not load_caffemodel(net, info["caffemodel"]).missing


def test_resume_from_epoch_2_gives_the_same_epoch_3_weights(finished_run: Path, tmp_path: Path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    prefix = finished_run / "snapshots" / "cifar_resnet_1111"
    for suffix in (".json", ".caffemodel", ".solverstate"):
        (copy / "snapshots" / f"cifar_resnet_1111_iter_24{suffix}").unlink()
    # the copied config points at the original run's prototxt paths: rewrite them to the copy's
    for name in ("config.json", "solver.prototxt"):
        p = copy / name
        p.write_text(p.read_text().replace(str(finished_run), str(copy)))
    code, out, err = run(capsys, "train", "--resume", str(copy), "--quiet")
    assert code == 0, err
    assert "resumed from" in out and "iteration 16" in out
    a = (copy / "snapshots" / "cifar_resnet_1111_iter_24.caffemodel").read_bytes()
    b = Path(f"{prefix}_iter_24.caffemodel").read_bytes()
    assert a.replace(str(copy).encode(), b"") == b.replace(str(finished_run).encode(), b"")
    epochs = [r for r in read_log(copy / "log.csv") if r["Phase"] == "val"]
    assert [r["Epoch"] for r in epochs] == ["1", "2", "3"]  # no duplicate rows after the resume


@pytest.mark.slow
def test_sigkill_never_leaves_a_snapshot_that_resume_would_pick(data: Path, tmp_path: Path):
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "squeezecaffe", *TRAIN, "--epochs", "40", "--data", str(data),
           "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prefix = str(run_dir / "snapshots" / "cifar_resnet_1111")
    deadline = time.time() + 120
    try:
        while latest_complete(prefix) is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.4)  # a fixed point past the first snapshot: the assertions below hold wherever it lands
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    info = latest_complete(prefix)
    assert info is not None
    net = load_net(run_dir / "train_val.prototxt", "TRAIN")
    for marker in (run_dir / "snapshots").glob("*.json"):  # every snapshot with a marker is whole
        done = json.loads(marker.read_text())
        load_caffemodel(net, done["caffemodel"])  # written before the marker; pruning drops the marker first
        assert read_binary(done["solverstate"], pb.SolverState).iter == done["iter"]


@pytest.mark.slow
def test_sigint_snapshots_and_prints_the_resume_command(data: Path, tmp_path: Path):
    run_dir = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "squeezecaffe", *TRAIN, "--epochs", "40", "--data", str(data),
           "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    while not (run_dir / "log.csv").exists() or len(read_log(run_dir / "log.csv")) < 1:
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err  # 128 + SIGINT, as a shell reports Ctrl-C
    assert f"squeezecaffe train --resume {run_dir}" in out
    info = latest_complete(str(run_dir / "snapshots" / "cifar_resnet_1111"))
    assert info is not None and not info["epoch_done"]


def test_bad_inputs_are_one_line(data: Path, tmp_path: Path, capsys, no_caffe):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "train", "cifar_resnet_1111", "--data", str(empty), "--run-dir", str(tmp_path / "r1"))
    assert code == 2 and "no dataset manifest" in err and err.count("\n") == 1
    code, _, err = run(capsys, "train", "cifar_resnet_1111", "--data", str(data), "--classes", "10",
                       "--run-dir", str(tmp_path / "r2"))
    assert code == 2 and "--classes 10 but" in err and "holds 4 classes" in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(capsys, "train", "cifar_resnet_1111", "--data", str(data), "--run-dir", str(blocker / "run"))
    assert code == 2 and "cannot write the run directory" in err
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "missing_net.prototxt" base_lr: 0.01 max_iter: 10')
    code, _, err = run(capsys, "train", "--solver", str(solver), "--run-dir", str(tmp_path / "r3"))
    assert code == 2 and "missing_net.prototxt does not exist" in err
    code, _, err = run(capsys, "train", "--resume", str(tmp_path / "nowhere"))
    assert code == 2 and "config.json: not found" in err
    for flags, message in ((["--factors", "5,x"], "expected numbers separated by commas"),
                           (["--factors", "1"], "factors 1: each must be > 1"),
                           (["--bn-images", "-1"], "--bn-images -1: give a number of images >= 0"),
                           (["--engine", "caffe"], "pycaffe engine is not available")):
        code, _, err = run(capsys, "train", "cifar_resnet_1111", "--data", str(data), *flags,
                           "--run-dir", str(tmp_path / "r4"))
        assert code == 2 and message in err and err.count("\n") == 1
        assert not (tmp_path / "r4").exists()  # refused before the run directory was made


def test_plot_overlays_runs(finished_run: Path, tmp_path: Path, capsys):
    code, _, _ = run(capsys, "plot", str(finished_run), str(finished_run), "-o", str(tmp_path / "cmp.png"))
    assert code == 0 and (tmp_path / "cmp.png").stat().st_size > 10_000


def test_a_diverging_run_stops_naming_the_iteration(data: Path, tmp_path: Path, capsys):
    code, _, err = run(capsys, *TRAIN[:-1], "base_lr=1e20", "--data", str(data), "--run-dir", str(tmp_path / "nan"))
    assert code == 2 and "iteration 1: the training loss is not finite" in err and "lower learning rate" in err


@pytest.mark.slow
def test_data_in_memory_trains_the_same_run(data: Path, finished_run: Path, tmp_path: Path, capsys):
    """`--data-in-memory` (train and val databases decoded into one tensor each) gives the default run, weights
    and log, byte for byte on the CPU."""
    run_dir = tmp_path / "mem"
    code, _, err = run(capsys, *TRAIN, "--data", str(data), "--run-dir", str(run_dir), "--data-in-memory")
    assert code == 0, err
    snapshot = "snapshots/cifar_resnet_1111_iter_24.caffemodel"
    assert (run_dir / snapshot).read_bytes() == (finished_run / snapshot).read_bytes()
    keys = ("NumIters", "loss", "val_loss", "val_top1")
    assert [[r[k] for k in keys] for r in read_log(run_dir / "log.csv")] == \
        [[r[k] for k in keys] for r in read_log(finished_run / "log.csv")]
    assert json.loads((run_dir / "config.json").read_text())["device_options"]["data_in_memory"] is True


def test_a_finished_run_leaves_no_worker_processes(data: Path, tmp_path: Path, capsys, no_caffe) -> None:
    """The data readers' worker processes (persistent while a net lives) end with the run, so a process that trains
    runs one after another (bench/robustness.py, compress's retraining stages) does not gather them."""
    import multiprocessing

    before = set(multiprocessing.active_children())
    code, _, err = run(capsys, *TRAIN, "--epochs", "1", "--workers", "2", "--data", str(data), "--run-dir",
                       str(tmp_path / "w"))
    assert code == 0, err
    assert set(multiprocessing.active_children()) - before == set()


@pytest.mark.parametrize("edit, message", [
    ({"epochz": 3}, "unknown key 'epochz'"),
    ({"workers": "two"}, "workers is 'two', expected int"),
    ({"plateau": [1, 2]}, "plateau is [1, 2], expected an object"),
    ({"plateau": {"patience": "2"}}, "plateau.patience is '2', expected int"),
    ({"device_options": {"ampp": "bf16"}}, "unknown key 'device_options.ampp'"),
    ({"device_options": {"channels_last": "yes"}}, "device_options.channels_last is 'yes', expected bool"),
    ({"device_options": "cuda"}, "device_options is 'cuda', expected an object"),
])
def test_a_hand_edited_config_is_one_line(finished_run: Path, tmp_path: Path, capsys, edit, message) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, **edit}))
    code, _, err = run(capsys, "train", "--resume", str(copy), "--quiet")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_a_config_without_its_solver_path_is_one_line(finished_run: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    config = json.loads((copy / "config.json").read_text())
    del config["solver_path"]
    (copy / "config.json").write_text(json.dumps(config))
    code, _, err = run(capsys, "train", "--resume", str(copy), "--quiet")
    assert code == 2 and "no solver_path" in err and len(err.strip().splitlines()) == 1


def test_a_config_from_before_the_device_group_still_loads(finished_run: Path) -> None:
    """Runs written when the device options sat at the top level of config.json resume with the same settings."""
    from squeezecaffe.engines.device import DeviceOptions
    from squeezecaffe.train.config import load_config

    raw = json.loads((finished_run / "config.json").read_text())
    raw.pop("solver_path")
    assert load_config(raw, finished_run / "config.json").device_options == DeviceOptions()
    del raw["device_options"]
    flat = {**raw, "device": "cpu", "amp": None, "channels_last": True, "gpu_transform": False,
            "data_in_memory": True}
    cfg = load_config(flat, finished_run / "config.json")
    assert cfg.device_options == DeviceOptions(channels_last=True, data_in_memory=True)
    assert cfg.epochs == raw["epochs"] and cfg.model == raw["model"]


def test_tensorboard_event_files_hold_the_run(data: Path, tmp_path: Path, capsys, no_caffe) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "tb"
    assert main([*TRAIN, "--epochs", "2", "--data", str(data), "--run-dir", str(run_dir), "--tensorboard"]) == 0
    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate", "val/top1", "val/top5", "val/loss"} <= tags
    val = [r for r in read_log(run_dir / "log.csv") if r["Phase"] == "val"]
    assert [e.step for e in events.Scalars("val/top1")] == [int(r["NumIters"]) for r in val]
    assert [e.value for e in events.Scalars("val/top1")] == pytest.approx([float(r["val_top1"]) for r in val])


def test_tensorboard_without_the_extra_is_one_line(data: Path, tmp_path: Path, capsys, monkeypatch, no_caffe) -> None:
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    code, _, err = run(capsys, *TRAIN, "--epochs", "1", "--data", str(data), "--run-dir", str(tmp_path / "r"),
                       "--tensorboard")
    assert code == 2 and "pip install 'squeezecaffe[tensorboard]'" in err and len(err.strip().splitlines()) == 1


def _weights_of(path: Path) -> dict[str, list]:
    from squeezecaffe.caffe_rules.blobs import blob_values, read_caffemodel

    return {lp.name: [blob_values(b).tolist() for b in lp.blobs] for lp in read_caffemodel(path).layer}


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "group", "code"), [(signal.SIGTERM, True, 143), (signal.SIGINT, True, 130),
                                                       (signal.SIGHUP, False, 129)])
def test_a_stop_signal_as_a_job_runner_sends_it_snapshots_and_resumes_to_the_same_weights(
        data: Path, tmp_path: Path, signum: int, group: bool, code: int) -> None:
    """SIGTERM/SIGINT to the whole process group (scancel, systemd, Ctrl-C), SIGHUP to the process: with two data
    workers, the run finishes its iteration, snapshots, prints the resume command and exits 128 + the signal;
    no traceback. The signal is sent while the trainer is stopped mid-run, so it lands before the run can end.
    Resumed, the run ends with the weights of a run never stopped."""
    from tests.processes import stop_when

    argv = [*TRAIN, "--workers", "2", "--data", str(data)]
    run_dir = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "squeezecaffe", *argv, "--run-dir", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    trained = lambda: (run_dir / "log.csv").exists() and any(  # noqa: E731
        r["Phase"] == "train" for r in read_log(run_dir / "log.csv"))
    assert stop_when(proc, trained), "the run ended before it could be stopped"
    if group:
        os.killpg(proc.pid, signum)  # the workers get it too
    else:
        os.kill(proc.pid, signum)
    os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err and f"squeezecaffe train --resume {run_dir}" in out
    info = latest_complete(str(run_dir / "snapshots" / "cifar_resnet_1111"))
    assert info is not None and not info["epoch_done"]
    if signum != signal.SIGTERM:
        return
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    unbroken = tmp_path / "unbroken"
    assert main([*argv, "--run-dir", str(unbroken)]) == 0
    name = "snapshots/cifar_resnet_1111_iter_24.caffemodel"
    assert _weights_of(run_dir / name) == _weights_of(unbroken / name)


def test_a_run_records_its_data_as_an_absolute_path(data: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`train --data rel/path` from one directory; `eval RUN`, `compress RUN` and `--resume` read config.json's
    data from anywhere, so the path is stored resolved."""
    from squeezecaffe.train.config import TrainConfig
    from squeezecaffe.train.prepare import prepare_run

    monkeypatch.chdir(data.parent)
    prepare_run(TrainConfig(model="cifar_resnet_1111", data=data.name, engine="torch", epochs=1, batch_size=16),
                tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"] == str(data.resolve())
