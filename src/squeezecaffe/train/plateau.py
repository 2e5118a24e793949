"""The plateau LR-drop controller and the early stop: a pure state machine fed one validation top-1 per epoch.

An epoch improves when top1 >= anchor + min_delta; then the anchor moves to top1 and the plateau
counter resets. Otherwise the counter grows, and when it reaches `patience` the LR scale is divided
by the next factor of the cycle (5, 2, 5, 2, ...) and the counter resets. The engine multiplies
base_lr by the scale; the LR policy (poly) keeps decaying on top.

The early stop ends a run that validation says is done. It is armed once the controller has dropped the rate (the
drops get their chance first); then the run ends after `early_stop_patience` epochs (and at least
`early_stop_patience_iterations` iterations) without a new best (`early_stop_delta` above the last), counted from
the best epoch or from the first drop made at or after it, so a drop after the best gets the whole patience. A run
still gaining goes on.

No engine, clock or file here, so the decisions can be unit-tested, replayed on logged validation sequences and
replayed exactly after a resume (state_dict / load_state_dict).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from squeezecaffe.errors import UserError
from squeezecaffe.options import from_json_object

# The early stop's defaults: tests/test_early_stop.py replays them on the logged validation sequences of
# tests/fixtures/val_sequences.json (bench/early_stop.py adds a folder's run to it): they end none of them before
# its best epoch; docs/training.md has what they saved.
EARLY_STOP_PATIENCE = 2
EARLY_STOP_PATIENCE_ITERATIONS = 100
EARLY_STOP_DELTA = 0.001


@dataclass(frozen=True)
class PlateauOptions:
    """The controller's settings; the `train` verb's options are generated from these fields (their help is the
    metadata), so a default is written here and nowhere else."""

    min_delta: float = field(default=0.01, metadata={"help": "top-1 gain (a fraction) that counts as progress"})
    patience: int = field(default=2, metadata={"help": "epochs without progress before an LR drop"})
    patience_iterations: int = field(default=500, metadata={
        "help": "and at least this many iterations: a small set's short epochs would otherwise cut the rate "
                "before the net has learnt at it"})
    iterations_per_epoch: int = field(default=0, metadata={"cli": False})  # set by the Trainer; 0: epochs only
    factors: tuple[float, ...] = field(default=(5.0, 2.0), metadata={"help": "LR divisors, cycled"})
    min_lr: float = field(default=0.0, metadata={"help": "the scale never takes base_lr below this"})
    base_lr: float = field(default=1.0, metadata={"cli": False})  # turns min_lr into a floor on the scale
    cooldown: int = field(default=0, metadata={"help": "epochs after a drop that do not count towards the next"})
    stop_after: int | None = field(default=None,
                                   metadata={"help": "stop after this many drops in a row without improvement"})
    stop_below: float = field(default=1e-3, metadata={
        "help": "stop once a drop takes the LR scale below this: the rate no longer moves the weights "
                "(best.caffemodel keeps the best epoch); 0: never"})

    early_stop: bool = field(default=True, metadata={
        "help": "end the run once validation has stopped improving, after the controller's first LR drop: "
                "--early-stop-patience epochs without a new best (best.caffemodel keeps the best epoch); "
                "--no-early-stop leaves the end to the schedule and --stop-below"})
    early_stop_patience: int = field(default=EARLY_STOP_PATIENCE, metadata={
        "help": "epochs without a new best, from the best epoch or a drop after it, before the run ends"})
    early_stop_patience_iterations: int = field(default=EARLY_STOP_PATIENCE_ITERATIONS, metadata={
        "help": "and at least this many iterations (short epochs of a small set)"})
    early_stop_delta: float = field(default=EARLY_STOP_DELTA, metadata={
        "help": "top-1 gain (a fraction) over the best epoch that counts as a new best for the early stop"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "factors", tuple(float(f) for f in self.factors))  # a JSON list reads back
        if self.patience < 1:
            raise UserError(f"patience {self.patience}: must be >= 1")
        if not self.factors or any(f <= 1 for f in self.factors):
            raise UserError(f"factors {','.join(f'{f:g}' for f in self.factors)}: each must be > 1")
        if self.patience_iterations < 0:
            raise UserError(f"patience-iterations {self.patience_iterations}: must be >= 0")
        if self.early_stop_patience < 1 or self.early_stop_patience_iterations < 0:
            raise UserError(f"early-stop-patience {self.early_stop_patience} / -iterations "
                            f"{self.early_stop_patience_iterations}: must be >= 1 / >= 0")
        if not 0 <= self.early_stop_delta < 1:
            raise UserError(f"early-stop-delta {self.early_stop_delta:g}: must be a fraction in [0, 1)")
        if not 0 <= self.stop_below < 1:
            raise UserError(f"stop-below {self.stop_below:g}: must be 0 (never) or a scale below 1")


@dataclass
class PlateauController:
    options: PlateauOptions = field(default_factory=PlateauOptions)
    anchor: float = -math.inf
    counter: int = 0
    drops: int = 0
    drops_without_gain: int = 0
    cooldown_left: int = 0
    scale: float = 1.0
    epochs: int = 0
    history: list[dict] = field(default_factory=list)  # one entry per update: epoch, top1, event, scale
    stop: bool = False
    stop_reason: str = ""  # why `stop` was set, as the run's last line says it
    best: float = -math.inf  # the early stop's best top-1 (new bests by early_stop_delta)
    best_epoch: int = 0
    drop_epoch: int = 0  # the epoch of the first LR drop at or after the best epoch (0: none yet)
    armed: bool = False  # the controller has dropped the rate at least once: the early stop may end the run

    @property
    def patience(self) -> int:
        """Epochs without progress before a drop: `patience`, raised until they span `patience_iterations`
        iterations where epochs are short (measured: at batch 128 a 4,500-image set has 36-iteration epochs, and a
        2-epoch patience had divided the rate by 1,000 after 540 of the recipe's 2,000 iterations)."""
        opt = self.options
        if opt.iterations_per_epoch <= 0:
            return opt.patience
        return max(opt.patience, math.ceil(opt.patience_iterations / opt.iterations_per_epoch))

    @property
    def early_stop_patience(self) -> int:
        """Epochs a drop after the best epoch gets to produce a new best: `early_stop_patience`, raised until they
        span `early_stop_patience_iterations` iterations."""
        opt = self.options
        if opt.iterations_per_epoch <= 0:
            return opt.early_stop_patience
        return max(opt.early_stop_patience, math.ceil(opt.early_stop_patience_iterations / opt.iterations_per_epoch))

    def update(self, top1: float) -> float:
        """Feed one epoch's validation top-1 (a fraction); returns the LR scale for the next epoch."""
        opt = self.options
        self.epochs += 1
        event = ""
        if top1 >= self.anchor + opt.min_delta:
            self.anchor = top1
            self.counter = 0
            self.drops_without_gain = 0
            event = "improved"
        elif self.cooldown_left > 0:
            self.cooldown_left -= 1
            event = "cooldown"
        else:
            self.counter += 1
            event = f"plateau {self.counter}/{self.patience}"
            if self.counter >= self.patience:
                factor = opt.factors[self.drops % len(opt.factors)]
                floor = opt.min_lr / opt.base_lr if opt.base_lr > 0 else 0.0
                new_scale = max(self.scale / factor, floor)
                self.counter = 0
                self.cooldown_left = opt.cooldown
                if new_scale < self.scale * (1 - 1e-9):  # not already at the floor
                    self.scale = new_scale
                    self.drops += 1
                    self.drops_without_gain += 1
                    event = f"lr / {factor:g}"
                else:
                    event = "at min_lr"
                if opt.stop_after is not None and self.drops_without_gain >= opt.stop_after:
                    self.stop = True
                    self.stop_reason = f"no improvement after the last {self.drops_without_gain} LR drops"
                    event += "; stop"
                elif self.scale < opt.stop_below:
                    self.stop = True
                    self.stop_reason = f"the LR scale fell below --stop-below {opt.stop_below:g}"
                    event += f"; stop (scale below {opt.stop_below:g})"
        event = self._early_stop(top1, event)
        self.history.append({"epoch": self.epochs, "top1": top1, "event": event, "scale": self.scale})
        return self.scale

    def _early_stop(self, top1: float, event: str) -> str:
        """The early stop's bookkeeping after this epoch's controller decision; returns the event, extended when
        the run ends here. Armed once the controller has dropped the rate; then the run ends after
        `early_stop_patience` epochs without a new best, counted from the best epoch, or from the first drop made
        at or after it (that drop gets the whole patience to give a new best)."""
        self._track_best(top1, event)
        opt = self.options
        start = self.drop_epoch or self.best_epoch
        waited = self.epochs - start
        if opt.early_stop and not self.stop and self.armed and waited >= self.early_stop_patience:
            self.stop = True
            since = f"the LR drop after it (epoch {self.drop_epoch})" if self.drop_epoch else "then"
            self.stop_reason = (f"early stop: no gain of {100 * opt.early_stop_delta:g} point over epoch "
                                f"{self.best_epoch}'s val top-1 ({100 * self.best:.2f}%) in the {waited} epochs since "
                                f"{since}; best.caffemodel holds the best epoch (--no-early-stop trains on)")
            event += "; early stop"
        return event

    def _track_best(self, top1: float, event: str) -> None:
        if top1 >= self.best + self.options.early_stop_delta:
            self.best, self.best_epoch, self.drop_epoch = top1, self.epochs, 0
        if event.startswith("lr /"):
            self.armed = True
            if not self.drop_epoch:
                self.drop_epoch = self.epochs

    def force_drop(self) -> float:
        """Divide the scale by the cycle's next factor now (the divergence guard's recovery); returns the new scale.
        The plateau counter restarts, so the restored epochs get their full patience again."""
        opt = self.options
        factor = opt.factors[self.drops % len(opt.factors)]
        floor = opt.min_lr / opt.base_lr if opt.base_lr > 0 else 0.0
        self.scale = max(self.scale / factor, floor)
        self.drops += 1
        self.counter = 0
        if self.best_epoch:  # the restored best epoch gets the early stop's full patience at the new rate
            self.drop_epoch = self.epochs
            self.armed = True
        return self.scale

    @property
    def last_event(self) -> str:
        return self.history[-1]["event"] if self.history else ""

    def state_dict(self) -> dict:
        state = asdict(self)
        state["options"]["factors"] = list(self.options.factors)
        for name in ("anchor", "best"):  # JSON has no infinity
            state[name] = None if math.isinf(getattr(self, name)) else getattr(self, name)
        return state

    @classmethod
    def from_state_dict(cls, state: dict) -> PlateauController:
        ctl = cls()
        ctl.load_state_dict(state)
        return ctl

    def load_state_dict(self, state: dict, where: str = "the controller's state") -> None:
        """The state `state_dict` wrote, checked field by field (a damaged snapshot marker is one line naming
        `where`, never an attribute set from it unchecked)."""
        loaded = from_json_object(PlateauController, state, where, "controller.")
        if not all(isinstance(entry, dict) for entry in loaded.history):
            raise UserError(f"{where}: controller.history holds a non-object entry")
        for f in fields(PlateauController):
            setattr(self, f.name, getattr(loaded, f.name))
        for name in ("anchor", "best"):
            if getattr(self, name) is None:
                setattr(self, name, -math.inf)
        if "best" not in state:  # a snapshot from before the early stop: its bookkeeping replayed from history
            epochs = self.epochs
            for entry in self.history:
                epoch, top1, event = entry.get("epoch"), entry.get("top1"), entry.get("event")
                if isinstance(epoch, int) and isinstance(top1, int | float) and isinstance(event, str):
                    self.epochs = epoch
                    self._track_best(float(top1), event)
            self.epochs = epochs
