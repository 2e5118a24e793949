"""Training curves of one or several runs (to compare variants): loss, top-1/top-5, learning rate."""

from __future__ import annotations

from pathlib import Path

from squeezecaffe.errors import UserError
from squeezecaffe.pictures import pyplot, save_png
from squeezecaffe.train.logs import LOG_CSV, read_log


def _floats(rows, key):
    return [float(r[key]) for r in rows]


def plot_runs(run_dirs: list[Path], out: Path) -> Path:
    fig, (ax_loss, ax_acc, ax_lr) = pyplot().subplots(1, 3, figsize=(16, 4.5))
    for run in run_dirs:
        log = Path(run) / LOG_CSV
        if not log.is_file():
            raise UserError(f"{run}: no log.csv (not a run directory, or the run has not logged yet)")
        rows = read_log(log)
        label = Path(run).name
        train = [r for r in rows if r["Phase"] == "train" and r["loss"]]
        epochs = [r for r in rows if r["Phase"] == "val"]
        line = ax_loss.plot(_floats(train, "NumIters"), _floats(train, "loss"), lw=1, alpha=0.7, label=f"{label} train")[0]
        if epochs:
            ax_loss.plot(_floats(epochs, "NumIters"), _floats(epochs, "val_loss"), "o-", color=line.get_color(),
                         label=f"{label} val")
            ep = _floats(epochs, "Epoch")
            ax_acc.plot(ep, [100 * v for v in _floats(epochs, "val_top1")], "o-", color=line.get_color(),
                        label=f"{label} top-1")
            ax_acc.plot(ep, [100 * v for v in _floats(epochs, "val_top5")], "s--", color=line.get_color(),
                        alpha=0.6, label=f"{label} top-5")
            for r in epochs:
                if r["event"].startswith("lr /"):
                    ax_lr.axvline(float(r["NumIters"]), color=line.get_color(), ls=":", lw=1)
                    ax_lr.annotate(r["event"], (float(r["NumIters"]), 1), xycoords=("data", "axes fraction"),
                                   rotation=90, va="top", fontsize=7, color=line.get_color())
        for r in rows:  # the divergence guard's recoveries: where the run went wrong and was restored
            if r["Phase"] == "event":
                for ax in (ax_loss, ax_lr):
                    ax.axvline(float(r["NumIters"]), color="red", ls="--", lw=1)
                ax_loss.annotate("guard", (float(r["NumIters"]), 1), xycoords=("data", "axes fraction"), rotation=90,
                                 va="top", fontsize=7, color="red")
        ax_lr.plot(_floats(train, "NumIters"), _floats(train, "LearningRate"), color=line.get_color(), label=label)
    ax_loss.set(title="loss", xlabel="iteration")
    ax_acc.set(title="validation accuracy (%)", xlabel="epoch")
    ax_lr.set(title="learning rate (plateau drops dotted, guard recoveries red)", xlabel="iteration", yscale="log")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_png(fig, out)
