"""Recipes: the default rule (rate follows the global batch, enough iterations for small sets), the papers'
schedules, the registry's values unchanged, explicit options winning, and everything recorded in run.json."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from squeezecaffe.cli import main
from squeezecaffe.errors import UserError
from squeezecaffe.netgen.builder import build_train_val
from squeezecaffe.netgen.registry import MODELS
from squeezecaffe.proto import pb, read_text, to_text
from squeezecaffe.solvers.recipes import MIN_ITERATIONS, PAPER, resolve_recipe, scaled_rate


def test_the_rate_follows_the_batch() -> None:
    assert scaled_rate(0.04, 128, 128) == pytest.approx(0.04)
    assert scaled_rate(0.04, 128, 32) == pytest.approx(0.02)  # by the square root of the batch ratio
    assert scaled_rate(0.04, 128, 512) == pytest.approx(0.08)


def test_default_recipe_on_the_registry_dataset_is_the_registry_row() -> None:
    """The row's own schedule; only BatchNorm's window differs (200 iterations, not Caffe's ~1,000)."""
    for name in ("fullbypass8", "squeezenet_v1_0", "cifar_resnet_543"):
        spec = MODELS[name]
        default, registry = resolve_recipe(spec, "default"), resolve_recipe(spec, "registry")
        assert default.sched == registry.sched
        assert default.cfg == replace(registry.cfg, bn_fraction=0.995 if spec.batchnorm else None)


def test_default_recipe_sizes_a_small_set_and_a_small_batch(data: Path) -> None:
    spec = MODELS["fullbypass8"]
    result = resolve_recipe(spec, "default", data_dir=data, batch_size=16)
    per_epoch = math.ceil(120 / 16)  # the fixture's 120 training images
    assert result.sched.base_lr == pytest.approx(0.04 * (16 / 128) ** 0.5, rel=1e-5)
    assert result.sched.epochs == math.ceil(MIN_ITERATIONS / per_epoch)
    window = min(max(result.sched.epochs * per_epoch / 10, 100), 200)
    assert result.cfg.bn_fraction == pytest.approx(1 - 1 / window, abs=1e-4)  # BN averages over a tenth of it
    assert "moving_average_fraction: 0.99" in to_text(build_train_val(spec, result.cfg))
    explicit = resolve_recipe(spec, "default", data_dir=data, batch_size=16, epochs=3)
    assert explicit.sched.epochs == 3  # an explicit --epochs wins


def test_paper_recipe_states_its_source() -> None:
    for name, paper in PAPER.items():
        spec = MODELS[name if name in MODELS else f"{name}_543"]
        result = resolve_recipe(spec, "paper")
        assert (result.cfg.batch_size, result.sched.epochs) == (paper.batch_size or spec.data.batch_size,
                                                                 paper.epochs or spec.data.epochs)
        assert result.values["source"] == paper.why
    assert resolve_recipe(MODELS["fullbypass12"], "paper").cfg.batch_size == 10
    with pytest.raises(UserError, match="state no schedule for squeezenet_v1_1"):
        resolve_recipe(MODELS["squeezenet_v1_1"], "paper")
    with pytest.raises(UserError, match="--recipe fast"):
        resolve_recipe(MODELS["sq1"], "fast")


def test_train_records_the_recipe_and_the_solver_carries_it(data: Path, tmp_path: Path, no_caffe) -> None:
    run_dir = tmp_path / "run"
    assert main(["train", "cifar_resnet_1111", "--data", str(data), "--batch-size", "32", "--epochs", "1",
                 "--workers", "0", "--quiet", "--run-dir", str(run_dir)]) == 0
    recipe = json.loads((run_dir / "run.json").read_text())["recipe"]
    assert recipe["recipe"] == "default" and recipe["base_lr"] == pytest.approx(0.1 * (32 / 128) ** 0.5, rel=1e-5)
    solver = read_text(run_dir / "solver.prototxt", pb.SolverParameter)
    assert solver.base_lr == pytest.approx(recipe["base_lr"]) and solver.type == "Nesterov"
    assert solver.lr_policy == "poly"
