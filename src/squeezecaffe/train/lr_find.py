"""The learning-rate range test: train from a fresh init while the rate grows exponentially, watch the loss.

Over `iterations` steps the rate goes from `start` to `end` geometrically, with the model's own solver rules
(Caffe's Nesterov update, weight decay, the generated net and data), through the torch engine. The training loss,
smoothed by an exponential average (bias-corrected), first falls, then flattens, then explodes; the sweep stops
once it is 4x its minimum or not finite. The suggestion is a tenth of the rate at the smoothed minimum: the
largest rate that still trains stably, with the margin a schedule that starts at base_lr (poly decays from it,
with no warm-up) needs. It is a starting point measured on the user's data, not a guarantee.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from squeezecaffe.errors import UserError
from squeezecaffe.pictures import pyplot, save_png


@dataclass(frozen=True)
class SweepRange:
    start: float = 1e-5  # the first rate
    end: float = 10.0  # the last rate
    iterations: int = 200  # sweep length


SWEEP = SweepRange()  # the defaults of `lr-find` and of `--base-lr auto`
SMOOTHING = 0.95  # weight of the past in the loss average
EXPLODED = 4.0  # stop when the smoothed loss exceeds this multiple of its minimum
SUGGESTION_DIVISOR = 10.0


@dataclass
class LrSweep:
    rates: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # raw
    smoothed: list[float] = field(default_factory=list)

    @property
    def best(self) -> int:
        """Index of the smoothed minimum."""
        return min(range(len(self.smoothed)), key=self.smoothed.__getitem__)

    @property
    def suggestion(self) -> float:
        return self.rates[self.best] / SUGGESTION_DIVISOR


def sweep_rates(start: float, end: float, iterations: int) -> list[float]:
    if not 0 < start < end:
        raise UserError(f"lr-find: need 0 < --start ({start:g}) < --end ({end:g})")
    if iterations < 10:
        raise UserError(f"lr-find: --iterations {iterations}: need at least 10")
    ratio = (end / start) ** (1.0 / (iterations - 1))
    return [start * ratio**i for i in range(iterations)]


def run_sweep(solver, rates: list[float]) -> LrSweep:
    """`solver`: a torch-engine Solver fresh from its fillers; its base_lr is set per iteration, policy fixed."""
    from squeezecaffe.engines.torchcaffe.solver import read_scalars

    solver.sp.lr_policy = "fixed"
    out = LrSweep()
    average = 0.0
    for i, rate in enumerate(rates):
        solver.base_lr = rate
        losses: list = []
        solver.step(1, lambda s, losses=losses: losses.append(s.loss))
        (loss,) = read_scalars(losses)
        out.rates.append(rate)
        out.losses.append(loss)
        if not math.isfinite(loss):
            break
        average = SMOOTHING * average + (1 - SMOOTHING) * loss
        out.smoothed.append(average / (1 - SMOOTHING ** (i + 1)))
        if len(out.smoothed) > 10 and out.smoothed[-1] > EXPLODED * min(out.smoothed):
            break
    if len(out.smoothed) < 10:
        raise UserError(f"lr-find: the loss was not finite after {len(out.losses)} iterations from rate "
                        f"{rates[0]:g}; start lower (--start)")
    out.rates = out.rates[: len(out.smoothed)]
    out.losses = out.losses[: len(out.smoothed)]
    return out


def plot_sweep(sweep: LrSweep, path: Path, title: str) -> Path:
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    ax.plot(sweep.rates, sweep.losses, lw=0.8, alpha=0.4, label="loss")
    ax.plot(sweep.rates, sweep.smoothed, lw=1.8, label="smoothed")
    ax.axvline(sweep.rates[sweep.best], color="grey", ls=":", label=f"minimum at {sweep.rates[sweep.best]:.3g}")
    ax.axvline(sweep.suggestion, color="red", ls="--", label=f"suggested base_lr {sweep.suggestion:.3g}")
    top = max(sweep.smoothed[: max(1, sweep.best + 1)]) * 1.5
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss", title=title,
           ylim=(0, max(top, min(sweep.smoothed) * 2)))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def find_lr(solver_path: Path, *, start: float, end: float, iterations: int, seed: int, device: str = "cpu",
            workers: int = 2) -> LrSweep:
    from squeezecaffe.engines.torchcaffe.options import EngineOptions
    from squeezecaffe.engines.torchcaffe.solver import Solver

    solver = Solver.from_file(solver_path, options=EngineOptions(device=device, workers=workers), seed=seed)
    return run_sweep(solver, sweep_rates(start, end, iterations))


def auto_base_lr(write_nets, out_dir: Path, title: str, *, seed: int, device: str = "cpu",
                 workers: int = 2) -> tuple[float, dict]:
    """`base_lr auto` for gen and train: `write_nets()` writes the generated nets and returns solver.prototxt;
    the sweep runs on them and leaves lr_find.png beside them. Returns (rate, what to record)."""
    sweep = find_lr(write_nets(), start=SWEEP.start, end=SWEEP.end, iterations=SWEEP.iterations, seed=seed,
                    device=device, workers=workers)
    plot_sweep(sweep, out_dir / "lr_find.png", title)
    rate = float(f"{sweep.suggestion:.3g}")
    return rate, {"base_lr": rate, "base_lr_from": f"lr-find: a tenth of the smoothed minimum at "
                                                   f"{sweep.rates[sweep.best]:.3g} (lr_find.png)"}
