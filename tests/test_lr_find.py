"""The LR range test on a tiny net: the sweep finds a minimum inside the range, the CLI prints and plots it, and
`--base-lr auto` puts the suggestion into the generated solver and run.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from squeezecaffe.cli import main
from squeezecaffe.engines.torchcaffe.options import EngineOptions
from squeezecaffe.engines.torchcaffe.solver import Solver
from squeezecaffe.errors import UserError
from squeezecaffe.proto import pb, read_text
from squeezecaffe.train import lr_find
from squeezecaffe.train.lr_find import run_sweep, sweep_rates
from tests.datasets import small_data_dir
from tests.test_distributed import _solver


def test_the_sweep_finds_a_minimum_between_its_ends(tmp_path: Path) -> None:
    solver_path = _solver(tmp_path / "net", small_data_dir(tmp_path / "d", per_class=16, size=(14, 14)), 8)
    solver = Solver.from_file(solver_path, options=EngineOptions(workers=0), seed=1)
    sweep = run_sweep(solver, sweep_rates(1e-4, 1e5, 120))
    assert 0 < sweep.best < len(sweep.smoothed) - 1  # a minimum, not an end of the range
    assert sweep.smoothed[sweep.best] < 0.9 * sweep.smoothed[0]  # the loss did fall
    assert len(sweep.smoothed) < 120  # the loss exploded before the end, which stopped the sweep
    assert sweep.suggestion == pytest.approx(sweep.rates[sweep.best] / 10)
    with pytest.raises(UserError, match="need 0 <"):
        sweep_rates(1.0, 0.1, 50)


@pytest.mark.slow
def test_lr_find_verb_and_base_lr_auto(data: Path, tmp_path: Path, capsys, monkeypatch, no_caffe) -> None:
    plot = tmp_path / "sweep.png"
    assert main(["lr-find", "cifar_resnet_1111", "--data", str(data), "--batch-size", "8", "--iterations", "40",
                 "--start", "1e-4", "--end", "1e4", "--workers", "0", "-o", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "suggested base_lr" in out and plot.stat().st_size > 10_000
    suggestion = json.loads(plot.with_suffix(".json").read_text())["suggestion"]
    assert 1e-5 < suggestion < 1e2 and "still falling" not in out
    # --base-lr auto sweeps the default range (200 iterations); the wiring is what is tested here: a shorter one
    monkeypatch.setattr(lr_find, "SWEEP", lr_find.SweepRange(start=1e-4, end=1e4, iterations=40))
    run_dir = tmp_path / "run"
    assert main(["train", "cifar_resnet_1111", "--data", str(data), "--batch-size", "4", "--epochs", "1",
                 "--workers", "0", "--quiet", "--base-lr", "auto", "--run-dir", str(run_dir)]) == 0
    recipe = json.loads((run_dir / "run.json").read_text())["recipe"]
    assert recipe["solver_set.base_lr"] == "auto" and "lr-find" in recipe["base_lr_from"]
    assert read_text(run_dir / "solver.prototxt", pb.SolverParameter).base_lr == pytest.approx(recipe["base_lr"])
    assert (run_dir / "lr_find.png").is_file()
