"""`squeezecaffe train`: epoch-by-epoch training with the plateau controller, snapshots, resume, logs.

Per epoch: one epoch of solver iterations; a whole-database validation (loss, top-1, top-5); the
controller's decision (a new LR scale for the next epoch); a snapshot (.caffemodel, .solverstate, then
the marker holding the controller state); best.caffemodel when top-1 improved; a log row. The Solver
object does the iterations with Caffe's semantics; its own test and snapshot schedule is switched off
here because the run does both per epoch.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from squeezecaffe.engines.contract import IterationStats
from squeezecaffe.engines.torchcaffe.options import EngineOptions
from squeezecaffe.engines.torchcaffe.solver import read_scalars
from squeezecaffe.errors import UserError
from squeezecaffe.proto import pb, read_text
from squeezecaffe.train import rundir
from squeezecaffe.train.config import BN_EPOCH_SHARE, read_run_config
from squeezecaffe.train.engine import make_engine, pick_engine
from squeezecaffe.train.guard import Diverged, DivergenceGuard
from squeezecaffe.train.logs import RunLog, SilentLog
from squeezecaffe.train.plateau import PlateauController

if TYPE_CHECKING:
    from torch import Tensor


class Trainer:
    def __init__(self, run_dir: Path, echo: bool = True, progress: bool = True) -> None:
        from squeezecaffe.engines.torchcaffe import distributed

        self.run_dir = Path(run_dir).resolve()
        self.cfg, self.solver_path = read_run_config(self.run_dir)
        self.dist, device = distributed.init(self.cfg.device_options.device)  # torchrun: this rank's device
        self.main = self.dist.is_main
        self.progress = progress and self.main
        self.log = RunLog(self.run_dir, echo, tensorboard=self.cfg.tensorboard) if self.main else SilentLog()
        file_sp = read_text(self.solver_path, pb.SolverParameter)
        # snapshots always live in the run directory (a hand-written solver's prefix may point anywhere)
        generated = not self.cfg.solver and file_sp.snapshot_prefix
        self.prefix = file_sp.snapshot_prefix if generated else str(self.run_dir / "snapshots" / self.solver_path.stem)
        self.engine_name = pick_engine(self.cfg.engine, self.cfg.device_options.device)
        self.engine_options = EngineOptions(**{**asdict(self.cfg.device_options), "device": device},
                                            workers=self.cfg.workers)
        self.solver = self._make_engine()
        sp = self.solver.sp
        self.max_iter = sp.max_iter
        if not self.cfg.allow_sorted and self.main:
            self._refuse_sorted_data()
        records, batch_size = self.solver.train_geometry()
        self.images_per_iter = batch_size * sp.iter_size * self.dist.world  # the global batch
        self.iters_per_epoch = max(1, math.ceil(records / self.images_per_iter))
        # BatchNorm re-estimation: whole batches covering --bn-images training images, at most BN_EPOCH_SHARE of them
        per_forward = batch_size * self.dist.world
        images = min(self.cfg.bn_images, math.ceil(records * BN_EPOCH_SHARE))
        self.bn_batches = math.ceil(images / per_forward) if records and self.cfg.bn_images else 0
        self.bn_announced = False
        self.controller = PlateauController(replace(self.cfg.plateau, base_lr=sp.base_lr,
                                                    iterations_per_epoch=self.iters_per_epoch))
        self.best_top1 = -1.0
        self.best_iter: int | None = None  # the snapshot of the best epoch: kept through pruning for the guard
        self.guard = DivergenceGuard(self.solver.classes(), self.cfg.guard)
        self.interrupted = False
        self.window: list[tuple[int, Tensor | float]] = []  # (iteration, loss) since the last display
        self.t0 = time.time()
        if self.cfg.weights:
            self._load_initial_weights(announce=True)

    def _load_initial_weights(self, announce: bool) -> None:
        """Fine-tuning: the layers of --weights that fit the net (by name and shape) go to RUN/init.caffemodel,
        which the engine loads; layers whose shape changed start from their fillers, and the run says so."""
        from squeezecaffe.engines.torchcaffe.distributed import barrier
        from squeezecaffe.proto import read_binary, write_binary
        from squeezecaffe.train.finetune import fit_weights

        init = self.run_dir / "init.caffemodel"
        if self.dist.is_main:
            fitted, report = fit_weights(read_binary(self.cfg.weights, pb.NetParameter), self.solver.param_shapes(),
                                         self.cfg.weights)
            write_binary(init, fitted)
            if announce:
                self.log.line(report.describe(self.cfg.weights))
        barrier(self.dist)
        self.solver.load_weights(init)

    def _make_engine(self):
        if self.cfg.constraints and self.engine_name != "torch":
            raise UserError(f"{self.cfg.constraints}: training with pruning masks or shared weights runs on the torch "
                            "engine (Caffe's solver has no step between computing an update and applying it)")
        engine = make_engine(self.engine_name, self.solver_path, self.run_dir, self.engine_options,
                             seed=self.cfg.seed, snapshot_prefix=self.prefix, dist=self.dist)
        if self.cfg.constraints:
            from squeezecaffe.engines.torchcaffe.constraints import Constraints, load_constraints

            engine.set_constraints(Constraints(load_constraints(self.cfg.constraints), self.cfg.centroid_gradient,
                                               where=self.cfg.constraints))
        return engine

    def _refuse_sorted_data(self) -> None:
        from squeezecaffe.data_tools.order import label_order, sorted_message

        source = self.solver.train_source()
        order = label_order(source)
        if order.looks_sorted:
            raise UserError(sorted_message(source, order))

    # ------------------------------------------------------------------ resume
    def resume(self) -> int:
        from squeezecaffe.engines.torchcaffe.distributed import barrier

        if self.main:
            rundir.remove_stale(Path(self.prefix).parent)
        barrier(self.dist)
        info = rundir.latest_complete(self.prefix)
        if info is None:
            raise UserError(f"{self.run_dir}: no complete snapshot to resume from")
        self.controller.load_state_dict(info["controller"], info["marker"])
        self.solver.restore(info["solverstate"], lr_scale=self.controller.scale)
        self.best_top1 = info["best_top1"]
        self.best_iter = info.get("best_iter")
        self.guard.load_state_dict(info.get("guard", {}), info["marker"])
        self.log.truncate_after(self.solver.iter)
        self.log.line(f"resumed from {info['solverstate']} (iteration {self.solver.iter}, lr scale "
                      f"{self.controller.scale:g})")
        return self.solver.iter

    # ------------------------------------------------------------------ snapshots
    def snapshot(self, epoch_done: bool) -> dict:
        from squeezecaffe.engines.torchcaffe.distributed import barrier

        model, state = self.solver.snapshot()  # rank 0 writes; the others get the names
        info = {"iter": self.solver.iter, "epoch": self.solver.iter / self.iters_per_epoch, "epoch_done": epoch_done,
                "caffemodel": str(model), "solverstate": str(state), "controller": self.controller.state_dict(),
                "best_top1": self.best_top1, "best_iter": self.best_iter, "guard": self.guard.state_dict()}
        if self.main:
            rundir.write_json(Path(f"{self.prefix}_iter_{self.solver.iter}.json"), info)  # the marker: written last
            rundir.prune_snapshots(self.prefix, max(1, self.cfg.keep), protect=self.best_iter)
        barrier(self.dist)
        return info

    # ------------------------------------------------------------------ the loop
    def _on_iteration(self, stats: IterationStats, bar) -> None:
        self.window.append((stats.iter, stats.loss))
        display = self.solver.sp.display or 20
        if bar is not None:
            bar.update(1)
        if (stats.iter - 1) % display == 0 or stats.iter == self.max_iter:
            losses = self._read_window()
            self.window = []
            loss = sum(losses) / len(losses)
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{stats.lr:.3g}")
            self.log.row(Phase="train", Epoch=f"{stats.iter / self.iters_per_epoch:.3f}", NumIters=stats.iter,
                         Seconds=time.time() - self.t0, LearningRate=stats.lr, LRScale=self.controller.scale, loss=loss)

    def _read_window(self) -> list[float]:
        """The losses since the last display, read from the device in one transfer (the only wait for the
        device between displays), and shown to the guard (a non-finite loss or a spike raises Diverged). Read
        values stay in the window, so reading again (at the end of an epoch, before a snapshot) costs nothing."""
        values = read_scalars([loss for _, loss in self.window])
        self.window = [(it, value) for (it, _), value in zip(self.window, values, strict=True)]
        if values:
            bad = next((it for it, value in self.window if not math.isfinite(value)), None)
            self.guard.check_loss(values, bad - 1 if bad is not None else self.window[-1][0])
        return values

    def _handle_signal(self, signum, frame) -> None:
        self.interrupted = True
        self.stop_signal = signum

    def run(self) -> int:
        """0 when the run ends; 128 + the signal's number when SIGINT, SIGTERM or SIGHUP stopped it (after the
        iteration in flight, a snapshot and the resume command): 130, 143 and 129, what job runners expect."""
        from squeezecaffe.engines.torchcaffe.loader import STOP_SIGNALS

        self.stop_signal = 0
        handlers = {s: signal.signal(s, self._handle_signal) for s in STOP_SIGNALS}
        try:
            return self._run()
        finally:
            self.solver.close()  # the data readers' worker processes end with the run
            for s, h in handlers.items():
                signal.signal(s, h)

    def _run(self) -> int:
        solver = self.solver
        epochs = math.ceil(self.max_iter / self.iters_per_epoch)
        self.log.line(f"training {self.solver_path} for {epochs} epochs x {self.iters_per_epoch} iterations "
                      f"({self.images_per_iter} images each) with the {self.engine_name} engine on {solver.device}"
                      f"{f' x {self.dist.world} processes' if self.dist.enabled else ''}; "
                      f"run dir {self.run_dir}")
        if self.engine_name == "caffe":
            self.log.line(f"Caffe's own output goes to {self.run_dir / 'caffe.log'} (where Caffe stops the process on "
                          "a failed check, the terminal also gets its FATAL line)")
        while solver.iter < self.max_iter:
            epoch = solver.iter // self.iters_per_epoch
            end = min((epoch + 1) * self.iters_per_epoch, self.max_iter)
            bar = tqdm(total=end - solver.iter, desc=f"epoch {epoch + 1}/{epochs}", unit="it", leave=False,
                       disable=not self.progress)
            started, start_iter = time.time(), solver.iter
            try:
                solver.step(end - solver.iter, lambda s, bar=bar: self._on_iteration(s, bar), lambda: self.interrupted)
                self._read_window()  # no snapshot of weights that a non-finite loss went into
            except Diverged as exc:
                bar.close()
                self._recover(exc.reason, exc.iteration)
                solver = self.solver
                continue
            bar.close()
            rate = (solver.iter - start_iter) * self.images_per_iter / max(time.time() - started, 1e-9)
            if self.interrupted:
                self.snapshot(epoch_done=False)
                name = signal.Signals(self.stop_signal).name if self.stop_signal else "a signal"
                self.log.line(f"stopped by {name} at iteration {solver.iter}; snapshot written. Resume with:\n"
                              f"  squeezecaffe train --resume {self.run_dir}")
                return 128 + self.stop_signal if self.stop_signal else 130
            used = solver.reestimate_batchnorm(self.bn_batches)  # what validation, the snapshot, best.caffemodel hold
            if used and not self.bn_announced:
                self.bn_announced = True
                self.log.line(f"BatchNorm statistics re-estimated over the latest {used:,} training images at the "
                              "current weights before each validation (--bn-images)")
            result = solver.validate()
            collapse = self.guard.collapsed(result.top1, self.best_top1, result.majority)
            if collapse is not None:
                self.log.row(Phase="val", Epoch=epoch + 1, NumIters=solver.iter, Seconds=time.time() - self.t0,
                             LearningRate=solver.learning_rate(), LRScale=self.controller.scale, val_loss=result.loss,
                             val_top1=result.top1, val_top5=result.top5, images_per_s=rate, event="collapse")
                self._recover(collapse, solver.iter)
                solver = self.solver
                continue
            scale = self.controller.update(result.top1)
            solver.set_lr_scale(scale)
            improved = result.top1 > self.best_top1
            if improved:
                self.best_top1 = result.top1
                self.best_iter = solver.iter
            info = self.snapshot(epoch_done=True)
            if improved and self.main:
                rundir.copy_atomic(Path(info["caffemodel"]), self.run_dir / "best.caffemodel")
            event = self.controller.last_event
            self.log.row(Phase="val", Epoch=epoch + 1, NumIters=solver.iter, Seconds=time.time() - self.t0,
                         LearningRate=solver.learning_rate(), LRScale=scale, val_loss=result.loss,
                         val_top1=result.top1, val_top5=result.top5, images_per_s=rate, event=event)
            self.log.line(f"epoch {epoch + 1}/{epochs}: iteration {solver.iter}, val loss {result.loss:.4f}, "
                          f"top-1 {100 * result.top1:.2f}%, top-5 {100 * result.top5:.2f}% ({result.count} images), "
                          f"{rate:.0f} images/s, lr scale {scale:g} ({event})")
            if self.controller.stop:
                self.log.line(f"stopping after epoch {epoch + 1}: {self.controller.stop_reason}; the best epoch is "
                              "in best.caffemodel")
                break
        self.finish()
        return 0

    def _recover(self, reason: str, iteration: int) -> None:
        """Restore the best snapshot (or the initial weights before any) with the LR divided by the controller's
        next factor; after `retries` recoveries, stop with one line saying what happened and where the best
        model is."""
        best = self.run_dir / "best.caffemodel"
        if self.guard.exhausted:
            where = (f"the best model (val top-1 {100 * self.best_top1:.2f}%) is {best}" if best.is_file()
                     else "no epoch finished, so there is no model to keep")
            tried = (f"; still after {self.guard.recoveries} recoveries (each restored the best snapshot and "
                     "divided the learning rate)" if self.guard.recoveries else "")
            raise UserError(f"iteration {iteration}: {reason}{tried}; {where}. Try a lower learning rate (e.g. "
                            f"--solver-set base_lr={self.solver.sp.base_lr / 10:g}) or --recipe default")
        scale = self.controller.force_drop()
        marker = Path(f"{self.prefix}_iter_{self.best_iter}.json") if self.best_iter is not None else None
        if marker is not None and marker.is_file():
            info = rundir.read_json(marker)
            self.solver.restore(info["solverstate"], lr_scale=scale)
            restored = f"the best snapshot (iteration {info['iter']})"
        else:  # nothing finished yet: start again from the initial weights
            self.solver.close()
            del self.solver
            self.solver = self._make_engine()
            if self.cfg.weights:
                self._load_initial_weights(announce=False)
            self.solver.set_lr_scale(scale)
            restored = "the initial weights"
        self.guard.recovered()
        self.window = []
        event = f"guard: {reason}; restored {restored}, lr scale {scale:g}"
        self.log.row(Phase="event", Epoch=f"{iteration / self.iters_per_epoch:.3f}", NumIters=iteration,
                     Seconds=time.time() - self.t0, LearningRate=self.solver.learning_rate(), LRScale=scale,
                     event=event.replace(",", ";"))
        self.log.line(f"{event} (recovery {self.guard.recoveries} of {self.guard.options.retries})")

    def finish(self) -> None:
        from squeezecaffe.train.plots import plot_runs

        if not self.main:
            return
        plot = plot_runs([self.run_dir], self.run_dir / "curves.png")
        self.log.line(f"done: {self.solver.iter} iterations, best val top-1 {100 * self.best_top1:.2f}%, "
                      f"{time.time() - self.t0:.0f} s; best.caffemodel, log.csv and {plot.name} in {self.run_dir}")
