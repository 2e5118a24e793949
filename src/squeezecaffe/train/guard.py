"""The collapse and divergence guard: a pure state machine the Trainer feeds losses and validation figures.

A run goes wrong in three ways that the figures it already reads can tell:
- the training loss is not finite (NaN/inf: the weights are gone);
- a loss spike: a display window's mean loss climbs back above the chance level ln(classes) after having been
  below a fraction of it (the net has unlearned everything, the usual start of a divergence);
- a collapse: validation top-1 falls back to chance (1/classes, or the largest class's share of the validation
  labels where that is more) after having been clearly better (e.g. BatchNorm statistics blown up by one bad
  batch, or every image predicted as one class).
The Trainer answers each by restoring its best snapshot and dividing the LR by the controller's next factor, up
to `retries` times; then it stops with one line. The guard reads only values the Trainer reads anyway (display
windows, validation), so it changes nothing in a healthy run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from squeezecaffe.errors import UserError


@dataclass(frozen=True)
class GuardOptions:
    """The guard's settings; `train --guard-retries` is generated from `retries` (the others are internal)."""

    retries: int = field(default=3, metadata={
        "help": "recoveries from a divergence or collapse (restore the best snapshot, divide the LR) before the "
                "run stops; 0 stops at the first sign"})
    spike_below: float = field(default=0.5, metadata={"cli": False})  # a spike needs a window below this share of
    collapse_share: float = field(default=0.25, metadata={"cli": False})  # the chance loss first; collapsed: kept
    min_gain: float = field(default=0.1, metadata={"cli": False})  # less than this share of a best gain >= min_gain

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise UserError(f"--guard-retries {self.retries}: must be 0 (stop at the first sign) or more")


class Diverged(Exception):
    """Raised inside the training loop; `iteration` is the last good one the problem was seen after."""

    def __init__(self, reason: str, iteration: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.iteration = iteration


@dataclass
class DivergenceGuard:
    classes: int
    options: GuardOptions = GuardOptions()
    lowest_loss: float = math.inf
    recoveries: int = 0

    @property
    def chance_loss(self) -> float:
        return math.log(max(2, self.classes))

    @property
    def chance_top1(self) -> float:
        return 1.0 / max(1, self.classes)

    def check_loss(self, window: list[float], iteration: int) -> None:
        """One display window's losses; raises Diverged on a non-finite loss or a spike."""
        bad = next((v for v in window if not math.isfinite(v)), None)
        if bad is not None:
            raise Diverged(f"the training loss is not finite ({bad})", iteration)
        mean = sum(window) / len(window)
        if (self.lowest_loss < self.options.spike_below * self.chance_loss and mean > self.chance_loss):
            raise Diverged(f"the training loss jumped to {mean:.3f}, above chance ({self.chance_loss:.3f}), after "
                           f"reaching {self.lowest_loss:.3f}", iteration)
        self.lowest_loss = min(self.lowest_loss, mean)

    def collapsed(self, top1: float, best_top1: float, majority: float = 0.0) -> str | None:
        """Why this validation top-1 counts as a collapse, or None. Chance is the better of 1/classes and
        `majority`, the validation set's largest class share: on unbalanced data a net that predicts the majority
        class everywhere scores exactly that share, and has learned nothing."""
        chance = max(self.chance_top1, majority)
        gain = best_top1 - chance
        if gain < self.options.min_gain or top1 - chance >= self.options.collapse_share * gain:
            return None
        return (f"validation top-1 fell to {100 * top1:.2f}% (chance {100 * chance:.2f}%) after "
                f"reaching {100 * best_top1:.2f}%")

    def recovered(self) -> None:
        self.recoveries += 1
        self.lowest_loss = math.inf  # the restored weights start a new history

    @property
    def exhausted(self) -> bool:
        return self.recoveries >= self.options.retries

    def state_dict(self) -> dict:
        return {"recoveries": self.recoveries, "lowest_loss": None if math.isinf(self.lowest_loss) else self.lowest_loss}

    def load_state_dict(self, state: dict, where: str = "the guard's state") -> None:
        recoveries, lowest = state.get("recoveries", 0), state.get("lowest_loss")
        if not isinstance(recoveries, int) or isinstance(recoveries, bool) or recoveries < 0:
            raise UserError(f"{where}: guard.recoveries is {repr(recoveries)[:40]}, expected a count")
        if lowest is not None and (not isinstance(lowest, int | float) or isinstance(lowest, bool)):
            raise UserError(f"{where}: guard.lowest_loss is {repr(lowest)[:40]}, expected a number")
        self.recoveries = recoveries
        self.lowest_loss = math.inf if lowest is None else float(lowest)
