"""Training logs: `log.csv` (one row per display interval and one per epoch) and the raw text log.

Column names follow what Caffe's tools/extra/parse_log.py wrote (NumIters, Seconds, LearningRate,
loss), so existing scripts and habits carry over; epoch rows add the validation figures and the
controller's decision. Rows are appended and flushed as they happen; on resume the rows past the
restored iteration are dropped so the file reads like one uninterrupted run.
"""

from __future__ import annotations

import csv
from pathlib import Path

from squeezecaffe.fileio import atomic_write_text

LOG_CSV = "log.csv"  # the run directory's file names (rundir.py re-exports them)
RAW_LOG = "train.log"

COLUMNS = ["Phase", "Epoch", "NumIters", "Seconds", "LearningRate", "LRScale", "loss", "val_loss", "val_top1",
           "val_top5", "images_per_s", "event"]


# log.csv column -> TensorBoard tag, for the rows of each phase
TB_TAGS = {"train": {"loss": "train/loss", "LearningRate": "train/learning_rate", "LRScale": "train/lr_scale"},
           "val": {"val_loss": "val/loss", "val_top1": "val/top1", "val_top5": "val/top5",
                   "images_per_s": "speed/images_per_s"}}


class TensorBoardLog:
    """The same rows as TensorBoard event files in the run directory (`tensorboard --logdir runs/` shows several
    runs side by side, live); the controller's and the guard's events as text. Needs the `tensorboard` extra."""

    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            from squeezecaffe.errors import UserError

            raise UserError("--tensorboard needs the tensorboard package: pip install 'squeezecaffe[tensorboard]' "
                            "(or pip install tensorboard)") from None
        self.writer = SummaryWriter(log_dir=str(run_dir))

    def row(self, values: dict) -> None:
        step = int(values.get("NumIters", 0))
        for column, tag in TB_TAGS.get(values.get("Phase", ""), {}).items():
            value = values.get(column, "")
            if value != "":
                self.writer.add_scalar(tag, float(value), step)
        if values.get("event") and values.get("event") not in ("improved",) and not str(values["event"]).startswith(
                "plateau"):
            self.writer.add_text("events", f"iteration {step}: {values['event']}", step)
        self.writer.flush()


class RunLog:
    def __init__(self, run_dir: Path, echo: bool = True, tensorboard: bool = False) -> None:
        self.csv_path = run_dir / LOG_CSV
        self.raw_path = run_dir / RAW_LOG
        self.echo = echo
        self.tensorboard = TensorBoardLog(run_dir) if tensorboard else None
        if not self.csv_path.exists():
            atomic_write_text(self.csv_path, ",".join(COLUMNS) + "\n")

    def truncate_after(self, iteration: int) -> None:
        """Drop rows logged after `iteration` (they belong to the run that was interrupted)."""
        rows = read_log(self.csv_path)
        kept = [r for r in rows if int(r["NumIters"]) <= iteration]
        lines = [",".join(COLUMNS)] + [",".join(r.get(c, "") for c in COLUMNS) for r in kept]
        atomic_write_text(self.csv_path, "\n".join(lines) + "\n")

    def row(self, **values) -> None:
        with self.csv_path.open("a", newline="") as f:
            csv.writer(f).writerow([_fmt(values.get(c, "")) for c in COLUMNS])
        if self.tensorboard is not None:
            self.tensorboard.row(values)

    def line(self, text: str) -> None:
        if self.echo:
            print(text, flush=True)
        with self.raw_path.open("a", encoding="utf-8") as f:
            f.write(text + "\n")


class SilentLog:
    """The log of a data-parallel rank other than 0: rank 0 writes the run's files and prints."""

    def truncate_after(self, iteration: int) -> None:
        pass

    def row(self, **values) -> None:
        pass

    def line(self, text: str) -> None:
        pass


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def read_log(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))
