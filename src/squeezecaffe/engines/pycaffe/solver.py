"""Training with real Caffe through pycaffe, behind the training-engine contract (engines/contract.py).

What the fork's Python API lacks, and how it is done here:
- no learning-rate setter: a new LR scale is applied by snapshot -> a solver.prototxt with the scaled base_lr
  -> a new solver -> restore (`set_lr_scale`). Under `poly`, `step`, `multistep`, `inv` and `fixed` the rate is
  proportional to base_lr, so this equals scaling the rate in place. Caffe's new solver starts its Data layers
  at the first record again (the torch engine continues where it was).
- no per-iteration loss or rate: both come from Caffe's own display lines (display: 1, average_loss: 1), read
  from glog through `GlogTap`; glog prints 6 significant digits.
- two live solvers on the same data deadlock in this fork: the old solver is deleted before a new one is made,
  and validation uses the solver's own test net, sharing the train net's weights.
The solver file Caffe reads is written to `<work_dir>/caffe_solver.prototxt`; all Caffe output goes to `log_path`.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from squeezecaffe.engines.contract import IterationStats
from squeezecaffe.engines.pycaffe.runtime import (
    CAFFE_ERRORS,
    GlogTap,
    import_caffe,
    last_error,
    parse_iterations,
    select_device,
)
from squeezecaffe.errors import UserError
from squeezecaffe.fileio import resolve_beside
from squeezecaffe.proto import pb, read_text, write_text


def record_count(source: Path) -> int:
    from squeezecaffe.data_tools.lmdb_io import LmdbReader

    with LmdbReader(source) as reader:
        return len(reader)


def data_layer(net: pb.NetParameter, phase: int, where: str) -> pb.LayerParameter:
    """The one Data layer of `net` in `phase` (Caffe's include/exclude rules, as netgen's filter_net applies)."""
    from squeezecaffe.caffe_rules.state import filter_net, make_state

    found = [lp for lp in filter_net(net, make_state(phase)).layer if lp.type == "Data"]
    if len(found) != 1:
        raise UserError(f"{where}: the caffe engine needs exactly one Data layer in the "
                        f"{pb.Phase.Name(phase)} net (found {len(found)})")
    return found[0]


_ACTIVE: PycaffeSolver | None = None  # the one live Caffe solver of this process (see the module docstring)


class PycaffeSolver:
    """One Caffe solver at a time, recreated when the LR scale changes.

    Opening a PycaffeSolver closes the Caffe solver of any other one still alive in the process (a finished
    Trainer that has not been garbage-collected yet, say): two would deadlock on a shared Data source.
    """

    def __init__(self, solver_path: str | Path, *, work_dir: Path, log_path: Path, device: str = "cpu",
                 seed: int = 42, snapshot_prefix: str | None = None) -> None:
        self.caffe = import_caffe(cuda=device.startswith("cuda"))
        self.solver_path = Path(solver_path).resolve()
        self.sp = read_text(self.solver_path, pb.SolverParameter)
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = Path(log_path)
        self.device = device
        self.seed = seed
        if snapshot_prefix:
            self.sp.snapshot_prefix = snapshot_prefix
        net_name = self.sp.net or self.sp.train_net
        if not net_name:
            raise UserError(f"{self.solver_path}: the caffe engine needs `net:` (a train_val.prototxt file)")
        self.net_path = resolve_beside(net_name, self.solver_path.parent).resolve()
        self.net_param = read_text(self.net_path, pb.NetParameter)
        self.train_data = data_layer(self.net_param, pb.TRAIN, str(self.net_path))
        self.lr_scale = 1.0
        self._solver = None
        self._open()

    # ------------------------------------------------------------------ Caffe's solver
    def _caffe_solver_param(self) -> pb.SolverParameter:
        sp = pb.SolverParameter()
        sp.CopyFrom(self.sp)
        for name in ("net_param", "train_net", "train_net_param", "test_net", "test_net_param"):
            sp.ClearField(name)
        sp.net = str(self.net_path)
        sp.base_lr = self.sp.base_lr * self.lr_scale
        sp.display = 1  # every iteration's loss and rate reach the log
        sp.average_loss = 1
        # the Trainer validates per epoch; Caffe insists on test_interval > 0 when test nets exist, so: never
        sp.test_interval = 2**31 - 1
        sp.test_initialization = False
        sp.snapshot = 0
        sp.snapshot_after_train = False
        sp.random_seed = self.seed
        sp.solver_mode = pb.SolverParameter.GPU if self.device.startswith("cuda") else pb.SolverParameter.CPU
        return sp

    def _call(self, what: str, fn: Callable, *args):
        """Run a Caffe call with its glog output going to the log; a Python-side failure becomes one line."""
        error = result = None
        with GlogTap(self.log_path) as tap:
            try:
                result = fn(*args)
            except CAFFE_ERRORS as exc:
                error = exc
        self.last_output = tap.text
        if error is not None:
            raise UserError(f"caffe {what}: {last_error(tap.text) or error} (Caffe's log: {self.log_path})")
        return result

    def close(self) -> None:
        """Free Caffe's solver (its nets, prefetch threads and database readers)."""
        global _ACTIVE
        self._solver = None
        if _ACTIVE is self:
            _ACTIVE = None
        gc.collect()

    @property
    def solver(self):
        if self._solver is None:
            raise UserError("this Caffe solver was closed (another one was opened in the same process)")
        return self._solver

    def _open(self, restore: str | Path | None = None) -> None:
        global _ACTIVE
        caffe = self.caffe
        if _ACTIVE is not None and _ACTIVE is not self:
            _ACTIVE.close()
        self.close()  # the fork deadlocks when two solvers read the same Data source
        path = write_text(self.work_dir / "caffe_solver.prototxt", self._caffe_solver_param())
        select_device(caffe, self.device)
        self._call("set_random_seed", caffe.set_random_seed, self.seed)  # a CUDA build logs about cuRAND
        self._solver = self._call("solver", caffe.get_solver, str(path))
        _ACTIVE = self
        if restore is not None:
            self._call("restore", self.solver.restore, str(restore))

    # ------------------------------------------------------------------ the Trainer's interface
    @property
    def iter(self) -> int:
        return int(self.solver.iter)

    @property
    def net(self):
        return self.solver.net

    def train_source(self) -> Path:
        """The TRAIN Data layer's database."""
        return Path(resolve_beside(self.train_data.data_param.source, self.net_path.parent))

    def classes(self) -> int:
        """Channels of the logits the TRAIN net's loss scores (the guard's chance levels)."""
        from squeezecaffe.caffe_rules.state import filter_net, make_state
        from squeezecaffe.scoring import logits_blob
        logits, _ = logits_blob(filter_net(self.net_param, make_state(pb.TRAIN)).layer, str(self.net_path))
        return int(self.solver.net.blobs[logits].data.shape[1])

    def train_geometry(self) -> tuple[int, int]:
        """(records in the TRAIN database, batch size): what an epoch is."""
        return record_count(self.train_source()), self.train_data.data_param.batch_size

    def learning_rate(self) -> float:
        from squeezecaffe.solvers.lr_policy import learning_rate, multistep_current_step

        step = multistep_current_step(self.sp, self.iter, 0) if self.sp.lr_policy == "multistep" else 0
        return learning_rate(self.sp, self.iter, step, base_lr=self.sp.base_lr * self.lr_scale)

    def step(self, iters: int, callback: Callable[[IterationStats], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> None:
        for _ in range(iters):
            before = self.iter
            self._call(f"step at iteration {before}", self.solver.step, 1)
            seen = parse_iterations(self.last_output).get(before, {})
            if "loss" not in seen:
                raise UserError(f"caffe step at iteration {before}: no loss line in Caffe's output ({self.log_path})")
            if callback is not None:
                callback(IterationStats(self.iter, seen["loss"], seen.get("lr", math.nan)))
            if should_stop is not None and should_stop():
                break

    def snapshot(self) -> tuple[Path, Path]:
        stem = f"{self.sp.snapshot_prefix}_iter_{self.iter}"
        Path(stem).parent.mkdir(parents=True, exist_ok=True)
        self._call("snapshot", self.solver.snapshot)
        model, state = Path(stem + ".caffemodel"), Path(stem + ".solverstate")
        if not (model.is_file() and state.is_file()):
            raise UserError(f"caffe snapshot: {model} / {state} were not written (Caffe's log: {self.log_path})")
        return model, state

    def set_lr_scale(self, scale: float) -> None:
        """Snapshot, rewrite the solver with base_lr x scale, recreate it, restore: this fork has no LR setter."""
        if scale == self.lr_scale:
            return
        _, state = self.snapshot()
        self.lr_scale = scale
        self._open(restore=state)

    def restore(self, state: str | Path, lr_scale: float = 1.0) -> None:
        self.lr_scale = lr_scale
        path = Path(state)
        if not path.is_file():
            raise UserError(f"{path}: solver state not found")
        self._open(restore=path)

    def param_shapes(self) -> dict[str, list[tuple[int, ...]]]:
        """The TRAIN net's learned blobs by layer (what a weights file must fit)."""
        return {name: [tuple(b.data.shape) for b in blobs] for name, blobs in self.solver.net.params.items()}

    def load_weights(self, path: str | Path) -> None:
        if not Path(path).is_file():
            raise UserError(f"{path}: weights file not found")
        self._call("copy_from", self.solver.net.copy_from, str(path))

    def reestimate_batchnorm(self, batches: int) -> int:
        """BatchNorm's sums cleared and re-estimated by Caffe's own TRAIN forward passes (no backward, no update)
        over `batches` training batches at the current weights; returns the images used (0: no BatchNorm that
        accumulates). Unlike the torch engine, the batches are the next ones Caffe's reader gives (this fork
        cannot seek it, and a second net on the same database deadlocks), so training continues after them."""
        from squeezecaffe.caffe_rules.state import filter_net, make_state

        layers = [lp.name for lp in filter_net(self.net_param, make_state(pb.TRAIN)).layer
                  if lp.type == "BatchNorm" and not lp.batch_norm_param.use_global_stats]
        if batches <= 0 or not layers:
            return 0
        net = self.solver.net
        for name in layers:
            for blob in net.params[name]:
                blob.data[...] = 0
        for _ in range(batches):
            self._call("BatchNorm statistics", net.forward)
        return batches * self.train_data.data_param.batch_size

    def validate(self):
        """Whole-database loss/top-1/top-5 on Caffe's test net (sharing the train net's weights), every record
        once, collected and scored by the same function as the torch engine's validation."""
        from squeezecaffe.caffe_rules.state import filter_net, make_state
        from squeezecaffe.scoring import evaluate_batches, logits_blob

        if not len(self.solver.test_nets):
            raise UserError(f"{self.net_path}: no TEST net to validate on")
        net = self.solver.test_nets[0]
        test_data = data_layer(self.net_param, pb.TEST, str(self.net_path))
        logits_name, label_name = logits_blob(filter_net(self.net_param, make_state(pb.TEST)).layer,
                                              str(self.net_path))
        total = record_count(resolve_beside(test_data.data_param.source, self.net_path.parent))
        self._call("share weights", net.share_with, self.solver.net)

        def next_batch():
            net.forward()
            return np.array(net.blobs[logits_name].data), np.array(net.blobs[label_name].data)

        with GlogTap(self.log_path):
            return evaluate_batches(next_batch, total, test_data.data_param.batch_size)
