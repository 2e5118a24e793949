"""Starting a training run from a TrainConfig: the run directory, its lock, torchrun's ranks, the Trainer.

One home for what `squeezecaffe train` does after parsing, so the demo and the benchmarks start runs through the
same typed call instead of an argv list.
"""

from __future__ import annotations

import time
from pathlib import Path

from squeezecaffe.train.config import TrainConfig, read_run_config
from squeezecaffe.train.prepare import prepare_run
from squeezecaffe.train.rundir import RunLock
from squeezecaffe.train.runner import Trainer


def default_run_dir(cfg: TrainConfig) -> Path:
    """runs/<model>-<timestamp> (a variant's ':' made file-safe), or runs/<solver stem>-<timestamp>."""
    from squeezecaffe.netgen.variants import file_stem

    name = file_stem(cfg.model) if cfg.model else Path(cfg.solver or "run").stem
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def launch(cfg: TrainConfig, run_dir: Path | None = None, *, progress: bool = True, echo: bool = True) -> int:
    """Create the run directory (rank 0 under torchrun), train to the end, return the exit status. `echo`: the
    log's lines also on the terminal (compress's stages run quietly unless asked)."""
    from squeezecaffe.engines.torchcaffe import distributed

    ctx, _ = distributed.init(cfg.device_options.device)  # under torchrun: every rank runs this; rank 0 writes the run dir
    run_dir = distributed.broadcast_object(Path(run_dir) if run_dir else default_run_dir(cfg), ctx)
    lock = RunLock(run_dir)  # held by the one process that writes the run directory (rank 0 under torchrun)
    try:
        if ctx.is_main:
            prepare_run(cfg, run_dir, lock)
            if cfg.engine == "auto" and read_run_config(run_dir)[0].engine == "caffe":
                print("note: --engine auto chose real Caffe because it is built here; the torch engine trains the "
                      "same nets faster on CPUs (make bench-caffe measures both): --engine torch")
        distributed.barrier(ctx)
        return Trainer(run_dir, echo=echo, progress=progress).run()
    finally:
        lock.release()


def resume(run_dir: Path, *, progress: bool = True) -> int:
    """Continue a run from its newest complete snapshot."""
    with RunLock(Path(run_dir)):
        trainer = Trainer(Path(run_dir), progress=progress)
        trainer.resume()
        return trainer.run()
