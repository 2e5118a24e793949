"""Which training engine runs: real Caffe or the torch engine, both behind engines/contract.py's
`TrainingEngine`, so the Trainer does not care which one it steps."""

from __future__ import annotations

from pathlib import Path

from squeezecaffe.engines.contract import TrainingEngine
from squeezecaffe.engines.torchcaffe.distributed import Dist
from squeezecaffe.engines.torchcaffe.options import EngineOptions
from squeezecaffe.errors import UserError

ENGINES = ("auto", "torch", "caffe")


def pick_engine(name: str, device: str = "cpu") -> str:
    """`auto` drives real Caffe on CPU runs when it is built, else the torch engine (GPU runs take the torch engine
    unless --engine caffe is asked for); a data-parallel run (torchrun) always takes the torch engine."""
    if name not in ENGINES:
        raise UserError(f"--engine {name}: choose {', '.join(ENGINES)}")
    if name == "torch":
        return "torch"
    from squeezecaffe.engines.pycaffe.runtime import caffe_available, import_caffe

    if name == "caffe":
        import_caffe(cuda=device.startswith("cuda"))  # the one-line error when it is not built (with CUDA)
        return "caffe"
    from squeezecaffe.engines.torchcaffe.distributed import from_env

    return "caffe" if device == "cpu" and not from_env().enabled and caffe_available() else "torch"


def make_engine(name: str, solver_path: Path, run_dir: Path, options: EngineOptions, *, seed: int,
                snapshot_prefix: str, dist: Dist | None = None) -> TrainingEngine:
    if name == "torch":
        from squeezecaffe.engines.torchcaffe.adapter import TorchEngine

        return TorchEngine(solver_path, options, seed=seed, snapshot_prefix=snapshot_prefix, dist=dist)
    from squeezecaffe.engines.pycaffe.solver import PycaffeSolver

    if dist is not None and dist.enabled:
        raise UserError("data-parallel training (torchrun) runs the torch engine; use --engine torch")
    if options.torch_only:
        raise UserError(f"{'/'.join(options.torch_only)}: torch-engine options; Caffe trains in fp32 NCHW from its "
                        "own loader (use --engine torch)")
    return PycaffeSolver(solver_path, work_dir=run_dir / "caffe", log_path=run_dir / "caffe.log", device=options.device,
                         seed=seed, snapshot_prefix=snapshot_prefix)
