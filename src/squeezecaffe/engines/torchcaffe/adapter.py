"""The torch engine behind the training-engine contract (engines/contract.py): a Solver whose tests and snapshots
the Trainer schedules, a validation net sharing its weights, and BatchNorm re-estimation on a statistics net."""

from __future__ import annotations

from pathlib import Path

from squeezecaffe.engines.torchcaffe.distributed import Dist
from squeezecaffe.engines.torchcaffe.evaluate import evaluate
from squeezecaffe.engines.torchcaffe.net import CaffeNet, DataOptions
from squeezecaffe.engines.torchcaffe.options import EngineOptions
from squeezecaffe.engines.torchcaffe.solver import Solver
from squeezecaffe.errors import UserError
from squeezecaffe.scoring import EvalResult, logits_blob


class TorchEngine:
    def __init__(self, solver_path: Path, options: EngineOptions, *, seed: int, snapshot_prefix: str,
                 dist: Dist | None = None) -> None:
        self.solver = Solver.from_file(solver_path, options=options, seed=seed, dist=dist)
        self.sp = self.solver.sp
        self.sp.snapshot_prefix = snapshot_prefix
        self.sp.test_interval = 0  # validation and snapshots happen per epoch in the Trainer
        self.sp.snapshot = 0
        self.device = options.device
        self.lr_scale = 1.0
        self.val_net = self._val_net(solver_path, seed)
        self._stats_net: CaffeNet | None = None  # built on first use: a net without BatchNorm never needs it

    def _val_net(self, solver_path: Path, seed: int) -> CaffeNet:
        tests = self.solver.test_net_params() if len(self.sp.test_iter) else []
        param, where = tests[0] if tests else self.solver.train_net_param()
        net = CaffeNet(param, "TEST", where=where, base_dir=solver_path.parent,
                       data=DataOptions.for_engine(self.solver.options, seed))
        net.share_weights_from(self.solver.train_net)
        self.solver.options.apply(net)
        return net

    @property
    def iter(self) -> int:
        return self.solver.iter

    def _train_loader(self):
        loader = next(iter(self.solver.train_net.loaders.values()), None)
        if loader is None:
            raise UserError(f"{self.solver.where}: the TRAIN net has no Data layer to define an epoch")
        return loader

    def train_source(self) -> Path:
        """The TRAIN Data layer's database."""
        return Path(self._train_loader().source)

    def classes(self) -> int:
        """Channels of the logits the validation net scores (the guard's chance levels)."""
        logits, _ = logits_blob(self.val_net.filtered.layer, self.val_net.where)
        return int(self.val_net.top_shapes[logits][1])

    def train_geometry(self) -> tuple[int, int]:
        loader = self._train_loader()
        return len(loader), loader.batch_size

    def step(self, iters, callback=None, should_stop=None) -> None:
        self.solver.step(iters, callback, should_stop)

    def learning_rate(self) -> float:
        return self.solver.learning_rate()

    def set_lr_scale(self, scale: float) -> None:
        self.lr_scale = scale
        self.solver.base_lr = self.sp.base_lr * scale

    def snapshot(self) -> tuple[Path, Path]:
        return self.solver.snapshot()

    def restore(self, state: str | Path, lr_scale: float = 1.0) -> None:
        self.solver.restore(state)
        self.set_lr_scale(lr_scale)

    def load_weights(self, path: str | Path) -> None:
        self.solver.load_weights(path)

    def param_shapes(self) -> dict[str, list[tuple[int, ...]]]:
        """The TRAIN net's learned blobs by layer, in Caffe's shapes (what a weights file must fit)."""
        net = self.solver.train_net
        return {name: [tuple(b.shape) for b in module.blobs]
                for name, module in zip(net.layer_names, net.layers, strict=True) if len(module.blobs)}

    def set_constraints(self, constraints) -> None:
        self.solver.set_constraints(constraints)

    def validate(self) -> EvalResult:
        return evaluate(self.val_net)

    def close(self) -> None:
        """Stop every net's data readers (the training, validation and statistics nets)."""
        for net in (self.solver.train_net, self.val_net, self._stats_net):
            if net is not None:
                net.close()

    def reestimate_batchnorm(self, batches: int) -> int:
        """BatchNorm's sums re-estimated over the last `batches` training batches at the current weights (a TRAIN
        net sharing every blob, with its own reader); returns the images used (0: nothing to re-estimate)."""
        from squeezecaffe.engines.torchcaffe import batchnorm_stats

        if batches <= 0 or not batchnorm_stats.accumulating_layers(self.solver.train_net):
            return 0
        if self._stats_net is None:
            self._stats_net = self.solver.build_train_net()
            self._stats_net.share_weights_from(self.solver.train_net)
            self.solver.options.apply(self._stats_net)
        global_batch = self.train_geometry()[1] * self.solver.dist.world
        end = self.iter * self.sp.iter_size * global_batch
        return batchnorm_stats.reestimate(self._stats_net, batches, end, global_batch, self.solver.dist)
