"""A run directory before its first iteration: the generated (or the user's) solver and nets, config.json and
run.json, written once the engine is known to exist and the run's lock is held."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from squeezecaffe.errors import UserError
from squeezecaffe.proto import pb, read_text
from squeezecaffe.train import rundir
from squeezecaffe.train.config import TrainConfig
from squeezecaffe.train.engine import pick_engine


def generate_run_files(cfg: TrainConfig, out_dir: Path) -> tuple[Path, dict]:
    """A registry model's train_val/deploy/solver for `cfg.data`, its recipe and overrides applied, in `out_dir`;
    returns (solver.prototxt, what the recipe set). `base_lr auto` runs the LR range test first (lr_find.py)."""
    from squeezecaffe.data_tools.manifest import read_manifest
    from squeezecaffe.engines.torchcaffe import distributed
    from squeezecaffe.solvers.request import GenerationRequest, generate_run

    if not cfg.model:
        raise UserError("give a MODEL name or --solver")
    if not cfg.data:
        raise UserError("--data DIR is needed (a directory written by 'squeezecaffe build-lmdb')")
    manifest = read_manifest(cfg.data)
    if cfg.classes is not None and cfg.classes != manifest.classes:
        raise UserError(f"--classes {cfg.classes} but {cfg.data} holds {manifest.classes} classes")
    if not manifest.splits.get("val", {}).get("count"):
        raise UserError(f"{cfg.data}: no validation split (rebuild with --val-fraction, or give val images)")
    # under torchrun every rank reads its own batch: the generated solver's epochs count the global batch
    request = GenerationRequest(
        model=cfg.model, data=str(Path(cfg.data).resolve()), recipe=cfg.recipe, input=cfg.input,
        batch_size=cfg.batch_size, test_batch_size=cfg.test_batch_size, epochs=cfg.epochs, normalize=cfg.normalize,
        freeze=tuple(cfg.freeze), solver_set=dict(cfg.solver_set), world=distributed.from_env().world)

    def find_rate(write_nets):
        from squeezecaffe.train.lr_find import auto_base_lr

        return auto_base_lr(write_nets, out_dir, f"{request.model}: LR range test", seed=cfg.seed,
                            device=cfg.device_options.device, workers=cfg.workers)

    run = generate_run(request, out_dir, find_rate=find_rate)
    return run.solver, run.recipe


def prepare_run(cfg: TrainConfig, run_dir: Path, lock: rundir.RunLock | None = None) -> Path:
    """Create the run directory with its prototxt, config.json and run.json; returns solver.prototxt.

    `lock` is taken once the engine is known to exist, before anything is written into the directory."""
    if cfg.solver and (cfg.freeze or cfg.normalize):
        raise UserError("--freeze and --normalize change the generated train_val; with --solver, edit your "
                        "train_val.prototxt instead (lr_mult: 0; a Power layer per channel)")
    if cfg.weights and not Path(cfg.weights).is_file():
        raise UserError(f"{cfg.weights}: weights file not found")
    engine = pick_engine(cfg.engine, cfg.device_options.device)
    # config.json names the engine (a resumed run keeps the one it started with) and holds absolute paths, so
    # `--resume`, `eval RUN` and `compress RUN` find the data and weights from any working directory
    cfg = replace(cfg, engine=engine, data=str(Path(cfg.data).resolve()) if cfg.data else None,
                  weights=str(Path(cfg.weights).resolve()) if cfg.weights else None)
    if lock is not None:
        lock.acquire()
    run_dir = rundir.make_run_dir(run_dir)
    recipe: dict = {"recipe": "none (a hand-written solver)"}
    if cfg.solver:
        solver_path = Path(cfg.solver).resolve()
        if not solver_path.is_file():
            raise UserError(f"{cfg.solver}: solver file not found")
        sp = read_text(solver_path, pb.SolverParameter)
        net = sp.net or sp.train_net
        if net and not (Path(net).exists() or (solver_path.parent / net).exists()):
            raise UserError(f"{cfg.solver}: its net file {net} does not exist")
    else:
        solver_path, recipe = generate_run_files(cfg, run_dir)
    rundir.write_json(run_dir / rundir.CONFIG, {**asdict(cfg), "solver_path": str(solver_path)})
    rundir.write_json(run_dir / rundir.PROVENANCE, {**rundir.provenance(engine, cfg.device_options.device), "recipe": recipe})
    return solver_path
