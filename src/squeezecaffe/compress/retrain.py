"""A compression stage's retraining, through the training API: the source run's settings with what a stage decides
for itself replaced (`dataclasses.replace` on its TrainConfig), started by `train.launch`; and, with
--retrain-epochs 0, BatchNorm's statistics re-estimated at the stage's weights instead."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from squeezecaffe.compress.options import RETRAIN_LR_FACTOR, RETRAIN_MIN_ITERATIONS, CompressOptions
from squeezecaffe.errors import UserError
from squeezecaffe.evaluation.artifacts import Artifacts
from squeezecaffe.proto import pb, read_text

if TYPE_CHECKING:
    from squeezecaffe.train.config import TrainConfig


@dataclass
class Retrain:
    """What a retraining run needs: the source run's settings (or a fresh run's, with --model/--data) and its rate."""

    base: TrainConfig  # model, data and batch set; every other setting as the source run had it
    base_lr: float

    @property
    def model(self) -> str:
        return str(self.base.model)

    @property
    def data(self) -> str:
        return str(self.base.data)


def retrain_context(art: Artifacts, model: str | None, options: CompressOptions) -> Retrain | None:
    from squeezecaffe.train.config import TrainConfig, read_run_config

    source = read_run_config(art.run_dir)[0] if art.run_dir else None
    name = model or (source.model if source else None)
    data = options.data or (source.data if source else None)
    if not name or not data or art.data_dir is None:
        return None
    base = replace(source or TrainConfig(), model=name, data=str(art.data_dir),
                   batch_size=options.batch_size or (source.batch_size if source else None))
    if art.run_dir and (art.run_dir / "solver.prototxt").is_file() and source and source.model == name:
        base_lr = read_text(art.run_dir / "solver.prototxt", pb.SolverParameter).base_lr
    else:
        from squeezecaffe.netgen.variants import model_spec
        from squeezecaffe.solvers.recipes import resolve_recipe

        base_lr = resolve_recipe(model_spec(name), base.recipe, batch_size=base.batch_size,
                                 data_dir=str(art.data_dir)).sched.base_lr
    return Retrain(base, base_lr)


def retraining_epochs(ctx: Retrain, options: CompressOptions) -> tuple[int, int]:
    """(epochs, iterations per epoch) of each retraining stage: --retrain-epochs as given, else one epoch raised
    until the stage runs RETRAIN_MIN_ITERATIONS iterations."""
    import math

    from squeezecaffe.netgen.variants import model_spec
    from squeezecaffe.solvers.recipes import resolve_recipe
    from squeezecaffe.solvers.schedule import iterations_per_epoch

    resolved = resolve_recipe(model_spec(ctx.model), ctx.base.recipe, batch_size=ctx.base.batch_size,
                              data_dir=ctx.data)
    epoch = iterations_per_epoch(resolved.sched.train_size, resolved.cfg.batch_size, resolved.sched.iter_size)
    if options.retrain_epochs is not None:
        return options.retrain_epochs, epoch
    return max(1, math.ceil(RETRAIN_MIN_ITERATIONS / epoch)), epoch


def stage_config(ctx: Retrain, options: CompressOptions, **fields) -> TrainConfig:
    """The settings of a stage's run (retraining, or BatchNorm re-estimation): the source run's config.json with
    what a stage decides for itself replaced, and `fields` (the stage's own) on top.

    Taken over from the source run: the model's input, recipe and normalization, the batch sizes, the data loader
    workers, --allow-sorted, and the memory layout. Decided by the stage: the torch engine, this verb's device and
    seed (so no precision or data placement chosen for another device), the generated solver at the stage's own
    length and rate (no hand-written solver, no solver fields, no epochs of the source's), no initial weights,
    constraints or frozen layers of the source's, and the defaults of the controller (with no early stop: the stage
    runs the length the verb chose and printed), the guard and BatchNorm re-estimation."""
    from squeezecaffe.engines.device import DeviceOptions
    from squeezecaffe.train.config import TrainConfig
    from squeezecaffe.train.guard import GuardOptions
    from squeezecaffe.train.plateau import PlateauOptions

    fresh = TrainConfig()
    stage = replace(ctx.base, solver=None, engine="torch", epochs=None, classes=None, solver_set={}, weights=None,
                    constraints=None, freeze=[], tensorboard=False, keep=fresh.keep, seed=options.seed,
                    device_options=DeviceOptions(device=options.device,
                                                 channels_last=ctx.base.device_options.channels_last),
                    plateau=PlateauOptions(early_stop=False), guard=GuardOptions(), bn_images=fresh.bn_images)
    return replace(stage, **fields)


def retrain(stage_dir: Path, weights: Path, constraints: Path, ctx: Retrain, options: CompressOptions,
             epochs: int) -> Path:
    from squeezecaffe.train.launch import launch

    rate = options.retrain_lr if options.retrain_lr is not None else RETRAIN_LR_FACTOR * ctx.base_lr
    cfg = stage_config(ctx, options, epochs=epochs, solver_set={"base_lr": f"{rate:.6g}"}, keep=1,
                        weights=str(weights.resolve()), constraints=str(constraints.resolve()),
                        centroid_gradient=options.centroid_gradient)
    run_dir = stage_dir / "retrain"
    if launch(cfg, run_dir, progress=options.progress, echo=options.progress) != 0:
        raise UserError(f"{run_dir}: the retraining was stopped by a signal; run compress again")
    best = run_dir / "best.caffemodel"
    if not best.is_file():
        raise UserError(f"{run_dir}: retraining finished no epoch (no best.caffemodel)")
    return best


def recalibrate(stage_dir: Path, model: pb.NetParameter, ctx: Retrain, options: CompressOptions
                 ) -> tuple[pb.NetParameter, int]:
    """`model` with its BatchNorm statistics re-estimated at its own weights over `options.bn_images` training
    images (the first records of the training database); returns it and the images used.

    Pruning and quantizing change what every convolution outputs, and statistics measured on the dense weights no
    longer fit them: pruned to a third without retraining, fullbypass8 scored 19.7% with the dense model's
    statistics (docs/compression.md). A retraining run re-estimates them itself; this is for `--retrain-epochs 0`.
    The nets are generated as for retraining, into STAGE/recalibrate/; only BatchNorm blobs change."""
    from squeezecaffe.engines.torchcaffe.batchnorm_stats import reestimated_model
    from squeezecaffe.engines.torchcaffe.options import EngineOptions
    from squeezecaffe.train.prepare import generate_run_files

    folder = stage_dir / "recalibrate"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = stage_config(ctx, options, epochs=1)
    solver_path, _ = generate_run_files(cfg, folder)
    net_path = Path(read_text(solver_path, pb.SolverParameter).net)
    engine_options = EngineOptions(device=options.device, channels_last=cfg.device_options.channels_last,
                                   workers=cfg.workers)
    return reestimated_model(net_path, model, options.bn_images, engine_options, options.seed)
