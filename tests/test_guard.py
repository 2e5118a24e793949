"""The collapse and divergence guard: fires on a NaN, a loss spike and a collapse, restores the best snapshot
exactly, divides the LR, stops after its retries, and leaves a healthy run byte for byte as it was."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from squeezecaffe.caffe_rules.blobs import blob_values, read_caffemodel
from squeezecaffe.cli import main
from squeezecaffe.engines.torchcaffe.adapter import TorchEngine
from squeezecaffe.proto import pb, read_binary
from squeezecaffe.scoring import EvalResult
from squeezecaffe.train import runner
from squeezecaffe.train.guard import Diverged, DivergenceGuard, GuardOptions
from squeezecaffe.train.logs import read_log
from tests.conftest import TRAIN


def test_the_guard_reads_nan_spikes_and_collapses() -> None:
    guard = DivergenceGuard(classes=10)
    guard.check_loss([2.3, 2.2], 20)
    with pytest.raises(Diverged, match="not finite"):
        guard.check_loss([1.0, math.nan], 40)
    guard.check_loss([1.5, 1.4], 40)  # above half of chance (ln 10 = 2.30): no spike can be judged yet
    guard.check_loss([2.5], 60)
    guard.check_loss([0.5, 0.4], 80)  # now well below chance
    with pytest.raises(Diverged, match=r"jumped to 2\.500"):
        guard.check_loss([2.5], 100)
    assert guard.collapsed(0.12, 0.9) is not None  # back near 10% chance after 90%
    assert guard.collapsed(0.7, 0.9) is None  # a worse epoch, not a collapse
    assert guard.collapsed(0.1, 0.15) is None  # never clearly above chance: nothing to fall back from
    guard.recovered()
    assert not guard.exhausted and DivergenceGuard(2, GuardOptions(retries=0)).exhausted


def test_on_unbalanced_data_a_collapse_to_the_majority_class_is_caught() -> None:
    """A 70/30 validation set: predicting the majority class everywhere scores 70%, which is chance here, not
    learning. With chance at 1/2 the fall from 95% to 70% would pass as a worse epoch."""
    from squeezecaffe.scoring import evaluate_batches

    labels = np.array([0] * 70 + [1] * 30)
    collapsed_logits = np.tile([[3.0, -3.0]], (100, 1))  # class 0 everywhere
    batches = iter([(collapsed_logits[:50], labels[:50]), (collapsed_logits[50:], labels[50:])])
    result = evaluate_batches(lambda: next(batches), 100, 50)
    assert result.top1 == pytest.approx(0.7) and result.majority == pytest.approx(0.7)
    guard = DivergenceGuard(classes=2)
    assert guard.collapsed(result.top1, 0.95) is None  # the old rule (chance 1/classes) misses it
    reason = guard.collapsed(result.top1, 0.95, result.majority)
    assert reason is not None and "(chance 70.00%)" in reason
    assert guard.collapsed(0.9, 0.95, result.majority) is None  # a slightly worse epoch is not a collapse
    assert guard.collapsed(0.75, 0.78, result.majority) is None  # never clearly above the majority share


def _weights(path: Path) -> dict[str, np.ndarray]:
    return {f"{lp.name}/{i}": blob_values(b) for lp in read_caffemodel(path).layer for i, b in enumerate(lp.blobs)}


@pytest.fixture
def recoveries(monkeypatch) -> list[dict[str, np.ndarray]]:
    """The train net's weights right after each recovery (to compare with the snapshot it restored)."""
    seen: list[dict[str, np.ndarray]] = []
    original = runner.Trainer._recover

    def spy(self, reason, iteration):
        original(self, reason, iteration)
        net = self.solver.solver.train_net
        seen.append({f"{name}/{i}": blob.detach().numpy().copy() for name, i, blob, _, _ in net.learnable()})

    monkeypatch.setattr(runner.Trainer, "_recover", spy)
    return seen


def _restored_best(run_dir: Path, restored: dict[str, np.ndarray]) -> None:
    best = _weights(run_dir / "snapshots" / "cifar_resnet_1111_iter_8.caffemodel")  # epoch 1: the best so far
    assert best.keys() == restored.keys()
    for key, values in best.items():
        assert np.array_equal(values, restored[key].ravel()), key


@pytest.mark.slow
def test_a_nan_mid_run_restores_the_best_snapshot_and_divides_the_lr(data: Path, tmp_path: Path, monkeypatch,
                                                                     recoveries, capsys, no_caffe) -> None:
    calls = {"n": 0}
    original = TorchEngine.step

    def poisoned(self, iters, callback=None, should_stop=None):
        calls["n"] += 1
        if calls["n"] == 2:  # epoch 2: one weight becomes NaN
            with torch.no_grad():
                self.solver.train_net.learnable()[0][2].view(-1)[0] = math.nan
        return original(self, iters, callback, should_stop)

    monkeypatch.setattr(TorchEngine, "step", poisoned)
    run_dir = tmp_path / "nan"
    assert main([*TRAIN, "--data", str(data), "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "guard: the training loss is not finite (nan); restored the best snapshot (iteration 8)" in out
    rows = read_log(run_dir / "log.csv")
    events = [r for r in rows if r["Phase"] == "event"]
    assert len(events) == 1 and float(events[0]["LRScale"]) == pytest.approx(0.2)
    assert [r["Epoch"] for r in rows if r["Phase"] == "val"] == ["1", "2", "3"]
    assert len(recoveries) == 1
    _restored_best(run_dir, recoveries[0])
    assert all(np.isfinite(v).all() for v in _weights(run_dir / "best.caffemodel").values())


def collapse_second_validation(monkeypatch, engine: type) -> None:
    """`engine`'s second validation reports chance (25% top-1 on the 4-class fixture data): a forced collapse."""
    calls = {"n": 0}
    original = engine.validate

    def collapsing(self):
        calls["n"] += 1
        result = original(self)
        return EvalResult(result.loss, 0.25, 0.5, result.count) if calls["n"] == 2 else result

    monkeypatch.setattr(engine, "validate", collapsing)


@pytest.mark.slow
def test_a_collapse_at_validation_restores_the_best_snapshot(data: Path, tmp_path: Path, monkeypatch, recoveries,
                                                             capsys, no_caffe) -> None:
    collapse_second_validation(monkeypatch, TorchEngine)
    run_dir = tmp_path / "collapse"
    assert main([*TRAIN, "--data", str(data), "--run-dir", str(run_dir)]) == 0
    assert "guard: validation top-1 fell to 25.00%" in capsys.readouterr().out
    rows = read_log(run_dir / "log.csv")
    assert [r["event"] for r in rows if r["Phase"] == "val"][1] == "collapse"
    assert len([r for r in rows if r["Phase"] == "event"]) == 1
    _restored_best(run_dir, recoveries[0])


def test_after_its_retries_the_guard_stops_with_one_line(data: Path, tmp_path: Path, capsys, no_caffe) -> None:
    code = main([*TRAIN[:-1], "base_lr=1e20", "--data", str(data), "--run-dir", str(tmp_path / "r"),
                 "--guard-retries", "2"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "not finite" in err and "still after 2 recoveries" in err and "no epoch finished" in err
    assert len([r for r in read_log(tmp_path / "r" / "log.csv") if r["Phase"] == "event"]) == 2


@pytest.mark.slow
def test_a_healthy_run_is_untouched(data: Path, finished_run: Path, tmp_path: Path, monkeypatch, no_caffe) -> None:
    """The same run with the guard's checks switched off gives the same files, byte for byte."""
    monkeypatch.setattr(DivergenceGuard, "check_loss", lambda self, window, iteration: None)
    monkeypatch.setattr(DivergenceGuard, "collapsed", lambda self, top1, best, majority=0.0: None)
    run_dir = tmp_path / "unguarded"
    assert main([*TRAIN, "--data", str(data), "--run-dir", str(run_dir)]) == 0
    name = "cifar_resnet_1111_iter_24"
    assert (finished_run / "snapshots" / f"{name}.caffemodel").read_bytes() == \
        (run_dir / "snapshots" / f"{name}.caffemodel").read_bytes()
    a, b = (read_binary(d / "snapshots" / f"{name}.solverstate", pb.SolverState) for d in (finished_run, run_dir))
    assert a.iter == b.iter and Path(a.learned_net).name == Path(b.learned_net).name  # the path differs, no more
    assert [h.SerializeToString() for h in a.history] == [h.SerializeToString() for h in b.history]
    keep = ("Phase", "NumIters", "LearningRate", "LRScale", "loss", "val_loss", "val_top1", "event")
    assert ([{k: r[k] for k in keep} for r in read_log(finished_run / "log.csv")]
            == [{k: r[k] for k in keep} for r in read_log(run_dir / "log.csv")])


def test_a_negative_retry_count_is_one_line_before_anything_is_written(data: Path, tmp_path: Path, capsys,
                                                                       no_caffe) -> None:
    code = main([*TRAIN, "--data", str(data), "--run-dir", str(tmp_path / "r"), "--guard-retries", "-1"])
    err = capsys.readouterr().err
    assert code == 2 and "--guard-retries -1" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
