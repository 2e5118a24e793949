"""Write a model's train_val / deploy / solver prototxt from one definition."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from squeezecaffe.netgen.builder import build_deploy, build_train_val
from squeezecaffe.netgen.config import NetConfig
from squeezecaffe.netgen.freeze import freeze
from squeezecaffe.netgen.registry import MODELS, ModelSpec
from squeezecaffe.proto import pb, to_text, write_text
from squeezecaffe.solvers.prototxt import build_solver
from squeezecaffe.solvers.schedule import TrainSchedule
from squeezecaffe.solvers.settings import resolve

COMMITTED_DIR = "prototxt"
FILES = ("train_val.prototxt", "deploy.prototxt", "solver.prototxt")


@dataclass
class GeneratedModel:
    spec: ModelSpec
    cfg: NetConfig
    sched: TrainSchedule
    train_val: pb.NetParameter
    deploy: pb.NetParameter
    solver: pb.SolverParameter
    frozen: list[str]  # train_val layers trained with lr_mult 0 (fine-tuning)

    def texts(self) -> dict[str, str]:
        return {"train_val.prototxt": to_text(self.train_val), "deploy.prototxt": to_text(self.deploy),
                "solver.prototxt": to_text(self.solver)}


def generate(spec: ModelSpec, out_dir: str | Path, cfg: NetConfig, sched: TrainSchedule,
             solver_overrides: dict[str, str] | None = None, snapshot_prefix: str | None = None,
             freeze_layers: tuple[str, ...] = ()) -> GeneratedModel:
    """`freeze_layers`: layer names or patterns (a module name takes its layers) trained with lr_mult 0."""
    out_dir = Path(out_dir)
    solver = build_solver(cfg, sched, net_path=str(out_dir / "train_val.prototxt"),
                          snapshot_prefix=snapshot_prefix or f"runs/{spec.name}/{spec.name}",
                          overrides=solver_overrides)
    train_val = build_train_val(spec, cfg)
    frozen = freeze(train_val, list(freeze_layers)) if freeze_layers else []
    return GeneratedModel(spec, cfg, sched, train_val, build_deploy(spec, cfg), solver, frozen)


def write_generated(model: GeneratedModel, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    return [write_text(out_dir / "train_val.prototxt", model.train_val),
            write_text(out_dir / "deploy.prototxt", model.deploy),
            write_text(out_dir / "solver.prototxt", model.solver)]


def committed_model(spec: ModelSpec, root: str | Path = ".") -> GeneratedModel:
    """The version under prototxt/<model>/: registry defaults, paths relative to the repository root."""
    cfg, sched = resolve(spec)
    return generate(spec, Path(COMMITTED_DIR) / spec.name, cfg, sched)


def write_committed(root: str | Path = ".") -> list[Path]:
    written = []
    for spec in MODELS.values():
        written += write_generated(committed_model(spec), Path(root) / COMMITTED_DIR / spec.name)
    return written
