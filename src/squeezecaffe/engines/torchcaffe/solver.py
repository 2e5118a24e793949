"""Caffe's Solver loop on a CaffeNet: iter_size accumulation, clipping, regularisation, the update
rules of `updates.py`, tests, snapshots and exact restore.

One iteration, as Solver::Step and SGDSolver::ApplyUpdate order it: clear the diffs; test if
iter % test_interval == 0 (and iter > 0 or test_initialization); iter_size forward/backward passes;
clip the accumulated diffs by their global L2 norm; divide by iter_size; add weight decay; compute the
update with lr = policy(iter) * lr_mult; w -= update; iter += 1; snapshot if iter % snapshot == 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor

from squeezecaffe.caffe_rules.blobs import blob_shape, blob_values
from squeezecaffe.engines.contract import IterationStats
from squeezecaffe.engines.torchcaffe.constraints import Constraints
from squeezecaffe.engines.torchcaffe.distributed import Dist, average_, mean_tensor
from squeezecaffe.engines.torchcaffe.fillers import fill_net
from squeezecaffe.engines.torchcaffe.host_memory import keep_freed_host_memory
from squeezecaffe.engines.torchcaffe.net import CaffeNet, DataOptions
from squeezecaffe.engines.torchcaffe.options import EngineOptions
from squeezecaffe.engines.torchcaffe.updates import compute_update, history_slots, solver_type
from squeezecaffe.engines.torchcaffe.weights import load_caffemodel, save_caffemodel, tensor_to_blob
from squeezecaffe.errors import UserError
from squeezecaffe.fileio import resolve_beside
from squeezecaffe.proto import pb, read_binary, read_text, write_binary
from squeezecaffe.solvers.lr_policy import learning_rate, multistep_current_step

# feed(phase, iteration, pass) -> tensors for the net's Input blobs (nets with Data layers need none)
Feed = Callable[[str, int, int], Mapping[str, Tensor]]


def read_scalars(values: list[Tensor | float]) -> list[float]:
    """Python floats of 0-d tensors (and floats) with one device-to-host transfer for all of them."""
    tensors = [v for v in values if isinstance(v, Tensor)]
    if not tensors:
        return [float(v) for v in values]
    read = iter(torch.stack([t.detach().to(torch.float64) for t in tensors]).tolist())
    return [next(read) if isinstance(v, Tensor) else float(v) for v in values]


class Solver:
    def __init__(self, sp: pb.SolverParameter, *, where: str = "solver", base_dir: Path | None = None,
                 options: EngineOptions | None = None, feed: Feed | None = None, seed: int | None = None,
                 dist: Dist | None = None) -> None:
        self.sp = sp
        self.dist = dist or Dist()
        self.where = where
        self.base_dir = base_dir
        self.options = options or EngineOptions()
        self.feed = feed
        if self.options.torch_device().type == "cpu":
            keep_freed_host_memory()  # an iteration's activations are reused, not faulted in again
        self.kind = solver_type(sp)
        if sp.iter_size < 1:
            raise UserError(f"{where}: iter_size must be >= 1")
        if sp.regularization_type not in ("L1", "L2"):
            raise UserError(f"{where}: regularization_type '{sp.regularization_type}' (use L1 or L2)")
        self.seed = seed if seed is not None else (sp.random_seed if sp.random_seed >= 0 else 0)
        self.train_net = self.build_train_net()
        fill_net(self.train_net, self.seed)
        self.test_nets = []
        for i, (param, test_where) in enumerate(self.test_net_params()):
            state = sp.test_state[i] if i < len(sp.test_state) else pb.NetState()
            net = CaffeNet(param, "TEST", stages=tuple(state.stage), level=state.level, where=test_where,
                           base_dir=base_dir, data=DataOptions.for_engine(self.options, self.seed + 1 + i))
            net.share_weights_from(self.train_net)
            self.test_nets.append(net)
        for net in [self.train_net, *self.test_nets]:
            self.options.apply(net)
        self.params = self.train_net.learnable()
        for _, _, blob, lr_mult, _ in self.params:
            # Caffe computes no gradient for a blob with lr_mult 0 (its diff stays zero)
            blob.requires_grad_(lr_mult != 0 and blob.requires_grad)
        # Blobs no update can move (lr_mult 0 and no weight decay: BatchNorm's statistics): Caffe's update of them
        # is exactly zero while their history is, and a history only becomes non-zero through a non-zero rate,
        # so apply_update leaves them out (no zero diffs to build, average across ranks, decay or update).
        self.updated = [i for i, (_, _, _, lr_mult, decay_mult) in enumerate(self.params)
                        if lr_mult != 0 or (decay_mult != 0 and sp.weight_decay != 0)]
        # positions in `updated` by (lr_mult, decay_mult): the groups _grouped_update runs, decided once
        self.update_groups: dict[tuple[float, float], list[int]] = {}
        for k, i in enumerate(self.updated):
            self.update_groups.setdefault(self.params[i][3:5], []).append(k)
        slots = history_slots(self.kind)
        self.history = [torch.zeros_like(p[2]) for _ in range(slots) for p in self.params]
        self.iter = 0
        self.current_step = 0
        self.base_lr = sp.base_lr
        self.test_callback: Callable[[int, list[dict[str, float]]], None] | None = None
        self.last_test: list[dict[str, float]] | None = None
        self.constraints: Constraints | None = None

    def set_constraints(self, constraints: Constraints | None) -> None:
        """Hold chosen blobs to masks / shared values through every update (constraints.py); the current
        weights are projected onto them at once."""
        self.constraints = constraints
        if constraints is not None:
            constraints.bind(self.params)

    # ------------------------------------------------------------------ nets
    @classmethod
    def from_file(cls, path: str | Path, **kwargs) -> Solver:
        path = Path(path)
        return cls(read_text(path, pb.SolverParameter), where=str(path), base_dir=path.parent, **kwargs)

    def build_train_net(self) -> CaffeNet:
        """A TRAIN-phase net of this solver with its own Data layer readers (this rank's share, the run's seed, so
        the same crops and mirrors at each record position); its blobs are its own until shared."""
        sp = self.sp
        param, where = self.train_net_param()
        return CaffeNet(param, "TRAIN", stages=tuple(sp.train_state.stage), level=sp.train_state.level, where=where,
                        base_dir=self.base_dir,
                        data=DataOptions.for_engine(self.options, self.seed, self.dist.rank, self.dist.world))

    def train_net_param(self) -> tuple[pb.NetParameter, str]:
        sp = self.sp
        if sp.HasField("train_net_param"):
            return sp.train_net_param, f"{self.where} train_net_param"
        if sp.HasField("train_net"):
            return self.read_net(sp.train_net)
        if sp.HasField("net_param"):
            return sp.net_param, f"{self.where} net_param"
        if sp.HasField("net"):
            return self.read_net(sp.net)
        raise UserError(f"{self.where}: no net given (set net, net_param, train_net or train_net_param)")

    def read_net(self, name: str) -> tuple[pb.NetParameter, str]:
        path = resolve_beside(name, self.base_dir)
        return read_text(path, pb.NetParameter), str(path)

    def test_net_params(self) -> list[tuple[pb.NetParameter, str]]:
        sp = self.sp
        nets = [self.read_net(n) for n in sp.test_net]
        nets += [(p, f"{self.where} test_net_param") for p in sp.test_net_param]
        generic = len(sp.test_iter) - len(nets)
        if generic > 0:
            if sp.HasField("net_param"):
                nets += [(sp.net_param, f"{self.where} net_param")] * generic
            elif sp.HasField("net"):
                nets += [self.read_net(sp.net)] * generic
        if len(nets) != len(sp.test_iter):
            raise UserError(f"{self.where}: {len(sp.test_iter)} test_iter values for {len(nets)} test nets")
        return nets

    # ------------------------------------------------------------------ the loop
    def learning_rate(self) -> float:
        if self.sp.lr_policy == "multistep":
            self.current_step = multistep_current_step(self.sp, self.iter, self.current_step)
        return learning_rate(self.sp, self.iter, self.current_step, base_lr=self.base_lr)

    def _inputs(self, phase: str, it: int, k: int) -> Mapping[str, Tensor]:
        return self.feed(phase, it, k) if self.feed is not None else {}

    def step(self, iters: int, callback: Callable[[IterationStats], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> None:
        """Run `iters` iterations; `should_stop` is asked after each one (an interrupt ends the step early)."""
        stop = self.iter + iters
        sp = self.sp
        while self.iter < stop:
            for _, _, blob, _, _ in self.params:
                blob.grad = None
            if sp.test_interval and self.iter % sp.test_interval == 0 and (self.iter > 0 or sp.test_initialization):
                self.test_all()
            self.train_net.train()
            # Losses and outputs stay on the device: nothing here waits for the device to finish.
            loss: Tensor | float = 0.0
            outputs: dict[str, Tensor | float] = {}
            for k in range(sp.iter_size):
                loss = loss + self._train_pass(k, outputs)
            rate = self.learning_rate()
            self.apply_update(rate)
            self.iter += 1
            loss = mean_tensor(torch.as_tensor(loss), self.dist)  # a tensor: iter_size >= 1 passes were added
            if callback is not None:  # the global batch's loss, as one process would report it
                callback(IterationStats(self.iter, loss / sp.iter_size, rate, outputs))
            if sp.snapshot and self.iter % sp.snapshot == 0:
                self.snapshot()
            if should_stop is not None and should_stop():
                break

    def _train_pass(self, k: int, outputs: dict[str, Tensor | float]) -> Tensor:
        """One forward/backward pass of the train net: adds its scalar outputs into `outputs`, returns its loss.

        A function of its own so that the pass's blobs (every activation of the net) are released when it
        returns, not held through the next pass's forward (twice the activation memory at the peak).
        """
        self.train_net.step_key = self.iter * self.sp.iter_size + k
        result = self.train_net(self._inputs("TRAIN", self.iter, k))
        if result.loss.requires_grad:
            result.loss.backward()
        for name in self.train_net.output_blobs:
            t = result.blobs[name]
            if t.numel() == 1:
                outputs[name] = outputs.get(name, 0.0) + t.detach().reshape(()).to(torch.float64) / self.sp.iter_size
        return result.loss.detach().to(torch.float64)

    def solve(self, callback: Callable[[IterationStats], None] | None = None,
              test_callback: Callable[[int, list[dict[str, float]]], None] | None = None) -> None:
        """Run to max_iter as Caffe's Solver::Solve: final snapshot and a final test."""
        self.test_callback = test_callback
        self.step(max(0, self.sp.max_iter - self.iter), callback)
        if self.sp.snapshot_after_train and (not self.sp.snapshot or self.iter % self.sp.snapshot != 0):
            self.snapshot()
        if self.sp.test_interval and self.iter % self.sp.test_interval == 0:
            self.test_all()

    @torch.no_grad()
    def apply_update(self, rate: float) -> None:
        sp = self.sp
        blobs = [self.params[i][2] for i in self.updated]
        diffs = [blob.grad if blob.grad is not None else torch.zeros_like(blob) for blob in blobs]
        if not diffs:
            return
        average_(diffs, self.dist)  # data-parallel: the mean over the ranks, as Caffe's multi-GPU solver
        if sp.clip_gradients >= 0:
            # Caffe scales by clip / norm when norm > clip; min(1, clip / norm) on the device is the same
            # update (times exactly 1 otherwise) without waiting for the norm on the host.
            l2norm = torch.stack([d.double().square().sum() for d in diffs]).sum().sqrt()
            factor = (sp.clip_gradients / l2norm).clamp(max=1.0).to(diffs[0].dtype)
            for d in diffs:
                d.mul_(factor)
        if self.constraints is None and self.kind in ("SGD", "Nesterov") and sp.regularization_type == "L2":
            self._grouped_update(diffs, rate)
            return
        n = len(self.params)
        for i, diff in zip(self.updated, diffs, strict=True):
            _, _, blob, lr_mult, decay_mult = self.params[i]
            if sp.iter_size > 1:
                diff.mul_(1.0 / sp.iter_size)
            local_decay = sp.weight_decay * decay_mult
            if local_decay:
                if sp.regularization_type == "L2":
                    diff.add_(blob, alpha=local_decay)
                else:
                    diff.add_(torch.sign(blob), alpha=local_decay)
            if self.constraints is not None:
                self.constraints.on_diff(i, diff)
            hist = [self.history[i + s * n] for s in range(history_slots(self.kind))]
            compute_update(self.kind, sp, diff, hist, rate * lr_mult, self.iter)
            blob.sub_(diff)
            if self.constraints is not None:
                self.constraints.after_update(i, blob)

    def _grouped_update(self, diffs: list[Tensor], rate: float) -> None:
        """The SGD / Nesterov update of compute_update, one group of blobs sharing (lr_mult, decay_mult) at a time
        with torch's multi-tensor ops: the same arithmetic in the same order for every element (each foreach op is
        the per-tensor op over a list), a few calls per group instead of a dozen per blob."""
        sp, m = self.sp, self.sp.momentum
        for (lr_mult, decay_mult), members in self.update_groups.items():
            ds = [diffs[k] for k in members]
            blobs = [self.params[self.updated[k]][2] for k in members]
            hist = [self.history[self.updated[k]] for k in members]
            if sp.iter_size > 1:
                torch._foreach_mul_(ds, 1.0 / sp.iter_size)
            local_decay = sp.weight_decay * decay_mult
            if local_decay:
                torch._foreach_add_(ds, blobs, alpha=local_decay)
            local_rate = rate * lr_mult
            if self.kind == "SGD":  # h = m h + lr g; w -= h
                torch._foreach_mul_(hist, m)
                torch._foreach_add_(hist, ds, alpha=local_rate)
                torch._foreach_sub_(blobs, hist)
            else:  # Nesterov: h' = m h + lr g; w -= (1 + m) h' - m h
                before = torch._foreach_mul(hist, m)
                torch._foreach_mul_(hist, m)
                torch._foreach_add_(hist, ds, alpha=local_rate)
                step = torch._foreach_mul(hist, 1 + m)
                torch._foreach_sub_(step, before)
                torch._foreach_sub_(blobs, step)

    @torch.no_grad()
    def test(self, index: int = 0) -> dict[str, float]:
        """Mean of each scalar output of test net `index` over test_iter batches (from the start of its data)."""
        net = self.test_nets[index]
        net.eval()
        net.seek_data(0)
        sums: dict[str, Tensor] = {}
        for k in range(self.sp.test_iter[index]):
            result = net(self._inputs("TEST", self.iter, k))
            for name in net.output_blobs:
                t = result.blobs[name]
                if t.numel() == 1:  # summed on the device, read once after the last batch
                    sums[name] = sums.get(name, 0.0) + t.reshape(()).to(torch.float64)
        values = read_scalars(list(sums.values()))
        return {name: v / self.sp.test_iter[index] for name, v in zip(sums, values, strict=True)}

    def test_all(self) -> list[dict[str, float]]:
        results = [self.test(i) for i in range(len(self.test_nets))]
        self.last_test = results
        if self.test_callback is not None:
            self.test_callback(self.iter, results)
        return results

    # ------------------------------------------------------------------ snapshots
    def snapshot_prefix(self) -> str:
        if self.sp.snapshot_prefix:
            return self.sp.snapshot_prefix
        return str(Path(self.where).with_suffix(""))

    def snapshot(self) -> tuple[Path, Path]:
        """`<prefix>_iter_N.caffemodel` then `.solverstate`, each written atomically (by rank 0 only)."""
        stem = f"{self.snapshot_prefix()}_iter_{self.iter}"
        if not self.dist.is_main:
            return Path(stem + ".caffemodel"), Path(stem + ".solverstate")
        model = save_caffemodel(self.train_net, stem + ".caffemodel")
        state = pb.SolverState(iter=self.iter, learned_net=stem + ".caffemodel", current_step=self.current_step)
        state.history.extend(tensor_to_blob(h) for h in self.history)
        return model, write_binary(stem + ".solverstate", state)

    def restore(self, path: str | Path) -> None:
        """Continue from a .solverstate (ours or Caffe's): weights, history, iteration, data position."""
        path = Path(path)
        state = read_binary(path, pb.SolverState)
        if state.learned_net:
            candidates = [Path(state.learned_net), path.parent / Path(state.learned_net).name,
                          path.with_suffix(".caffemodel")]
            model = next((c for c in candidates if c.is_file()), None)
            if model is None:
                raise UserError(f"{path}: its weights file {state.learned_net} was not found (looked beside it too)")
            load_caffemodel(self.train_net, model)
        if len(state.history) != len(self.history):
            raise UserError(f"{path}: {len(state.history)} history blobs, this {self.kind} solver on this net needs "
                            f"{len(self.history)}")
        for i, (blob, h) in enumerate(zip(state.history, self.history, strict=True)):
            if blob_shape(blob) != tuple(h.shape):
                raise UserError(f"{path}: history blob {i} has shape {'x'.join(map(str, blob_shape(blob)))}, "
                                f"expected {'x'.join(map(str, h.shape))}")
            with torch.no_grad():
                h.copy_(torch.from_numpy(blob_values(blob).reshape(h.shape)).to(h.dtype))
        self.iter = state.iter
        self.current_step = state.current_step
        # Caffe restarts its Data layers at the first record; we continue where an uninterrupted run would be.
        self.train_net.seek_data(self.iter * self.sp.iter_size * self.train_net.batch_size() * self.dist.world)
        if self.constraints is not None:
            self.constraints.bind(self.params)

    def load_weights(self, path: str | Path) -> None:
        """Initialise from a .caffemodel (fine-tuning): layers matched by name, the rest keep their fillers."""
        load_caffemodel(self.train_net, path)
        if self.constraints is not None:
            self.constraints.bind(self.params)
