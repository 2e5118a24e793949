"""One generated run folder, asked for once: `gen` and `train` both describe what they want as a
`GenerationRequest` and call `generate_run`, so the recipe, the overrides, `--freeze` and `--base-lr auto` are
applied by one piece of code for both."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from squeezecaffe.errors import UserError
from squeezecaffe.netgen.config import parse_hw
from squeezecaffe.netgen.variants import file_stem, model_spec
from squeezecaffe.options import NOT_AN_OPTION, option
from squeezecaffe.solvers.generate import GeneratedModel, generate, write_generated
from squeezecaffe.solvers.recipes import resolve_recipe

# `--base-lr auto`: given a function that writes the nets and returns solver.prototxt, the rate to use and what to
# record about how it was found (train/lr_find.py's auto_base_lr, bound to the caller's device and seed).
RateFinder = Callable[[Callable[[], Path]], tuple[float, dict]]


@dataclass(frozen=True)
class GenerationRequest:
    """What a generated folder is made from. Each field that is also an option carries its default and help here,
    once: `gen` and `summary` build their options from these fields, and `train`'s TrainConfig takes the same fields
    over (`same_option`)."""

    model: str = field(default="", metadata=NOT_AN_OPTION)  # a registry name or a variant string (positional)
    data: str | None = option(None, "a data directory written by build-lmdb (classes, input size, databases and "
                                    "mean come from its manifest)")
    recipe: str = option("default", "default (rate follows the batch, enough iterations for small sets), paper, or "
                                    "registry")
    input: str | None = option(None, "network input HxW, e.g. 64x64 (default: the data's or the model's)")
    classes: int | None = option(None, "number of classes (default: the data's or the model's dataset; train checks "
                                       "it equals the data's)")
    batch_size: int | None = option(None, "images per training iteration (default: the recipe's)")
    test_batch_size: int | None = option(None, "images per validation batch")
    train_size: int | None = option(None, "training images, without --data (sizes max_iter and snapshots)")
    val_size: int | None = option(None, "validation images, without --data (sizes test_iter)")
    epochs: int | None = option(None, "epochs to train (default: the recipe's)")
    normalize: str | None = option(None, "std: also divide each channel by the data's std (default: the recipe's; "
                                         "mean otherwise)", choices=["mean", "std"])
    mean_file: bool = option(False, "use DATA/mean.binaryproto instead of per-channel mean_value")
    freeze: tuple[str, ...] = field(default=(), metadata=NOT_AN_OPTION)  # --freeze (repeatable, comma-separated)
    solver_set: Mapping[str, str] = field(default_factory=dict, metadata=NOT_AN_OPTION)  # --solver-set, --base-lr
    world: int = field(default=1, metadata=NOT_AN_OPTION)  # data-parallel processes: an epoch counts the global batch


def same_option(name: str):
    """A field of another settings dataclass that is GenerationRequest's option `name`: the same default and help,
    written once (TrainConfig's data, epochs, batch sizes, input, classes, recipe and normalize)."""
    f = next(f for f in fields(GenerationRequest) if f.name == name)
    return field(default=f.default, metadata=f.metadata)


@dataclass
class GeneratedRun:
    solver: Path  # solver.prototxt
    files: list[Path]  # everything written
    nets: GeneratedModel  # the nets and solver as written (summaries read the deploy net from here)
    recipe: dict  # what the recipe set, the hand-set solver fields (solver_set.*), frozen layers, a found base_lr


def generate_run(request: GenerationRequest, out_dir: Path, *, find_rate: RateFinder | None = None) -> GeneratedRun:
    """train_val, deploy and solver of `request.model` in `out_dir`, with its recipe and overrides applied."""
    spec = model_spec(request.model)
    result = resolve_recipe(
        spec, request.recipe, classes=request.classes, input_size=parse_hw(request.input) if request.input else None,
        batch_size=request.batch_size, test_batch_size=request.test_batch_size, train_size=request.train_size,
        val_size=request.val_size, epochs=request.epochs, data_dir=request.data, use_mean_file=request.mean_file,
        normalize=request.normalize)
    overrides = dict(request.solver_set)
    recipe = {**result.values, **{f"solver_set.{k}": v for k, v in overrides.items()}}
    sched = replace(result.sched, world=request.world)
    written: list[Path] = []
    last: list[GeneratedModel] = []

    def write() -> Path:
        model = generate(spec, out_dir, result.cfg, sched, overrides,
                         snapshot_prefix=str(out_dir / "snapshots" / file_stem(spec.name)),
                         freeze_layers=tuple(request.freeze))
        if model.frozen:
            recipe["frozen"] = model.frozen
        written[:] = write_generated(model, out_dir)
        last[:] = [model]
        return out_dir / "solver.prototxt"

    if overrides.get("base_lr") == "auto":
        if request.data is None or find_rate is None:
            raise UserError("--base-lr auto runs the LR range test on the data: give --data DIR")
        overrides.pop("base_lr")
        rate, found = find_rate(write)
        overrides["base_lr"] = str(rate)
        recipe.update({"solver_set.base_lr": "auto", **found})
    solver = write()
    return GeneratedRun(solver, list(written), last[0], recipe)
