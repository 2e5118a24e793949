"""`squeezecaffe report`: runs side by side in the shape of the seed study's Table 3.

Everything comes from files a run directory already holds: log.csv (best validation epoch, epochs,
wall time), deploy.prototxt (parameters), best.caffemodel (size), run.json (device), and the
metrics.json that `squeezecaffe eval` writes under RUN/eval/<split>/ (train and test top-1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from squeezecaffe.errors import UserError
from squeezecaffe.fileio import read_json_object
from squeezecaffe.train import rundir
from squeezecaffe.train.logs import LOG_CSV, read_log
from squeezecaffe.train.rundir import read_json


@dataclass
class RunRow:
    run: str
    model: str
    train_top1: float | None
    val_top1: float | None
    val_top5: float | None
    test_top1: float | None
    test_top5: float | None
    params: int | None
    caffemodel_mb: float | None
    epochs: float
    wall_s: float
    device: str
    images_per_s: float | None


def eval_metrics(run_dir: Path, split: str) -> dict | None:
    path = run_dir / "eval" / split / "metrics.json"
    return read_json_object(path, "an eval's metrics") if path.is_file() else None


def wall_seconds(rows: list[dict[str, str]]) -> float:
    """Sum over sessions: `Seconds` restarts from 0 when a run is resumed."""
    total, last = 0.0, 0.0
    for r in rows:
        s = float(r["Seconds"] or 0)
        if s < last:
            total += last
        last = s
    return total + last


def _params(deploy: Path) -> int | None:
    if not deploy.is_file():
        return None
    from squeezecaffe.netgen.summary import summarize
    from squeezecaffe.proto import pb, read_text

    return summarize(read_text(deploy, pb.NetParameter), where=str(deploy)).trainable


def _device(run_dir: Path) -> str:
    prov = read_json(run_dir / "run.json") if (run_dir / "run.json").is_file() else {}
    device = prov.get("device", "?")
    if device.startswith("cuda"):
        return prov.get("gpu", device)
    cpus = prov.get("cpus")
    return f"CPU x{cpus}" if cpus else "CPU"


def run_row(run_dir: Path) -> RunRow:
    run_dir = Path(run_dir)
    if not rundir.is_run_dir(run_dir):
        raise UserError(f"{run_dir}: not a run directory (no log.csv and config.json)")
    config = read_json(run_dir / "config.json")
    rows = read_log(run_dir / LOG_CSV)
    val = [r for r in rows if r["Phase"] == "val" and r["val_top1"]]
    best = max(val, key=lambda r: float(r["val_top1"])) if val else None
    train, test = eval_metrics(run_dir, "train"), eval_metrics(run_dir, "test")
    model_file = run_dir / "best.caffemodel"
    rates = [float(r["images_per_s"]) for r in val if r["images_per_s"]]
    return RunRow(
        run=run_dir.name, model=config.get("model") or Path(config.get("solver") or "?").stem,
        train_top1=train["top1"] if train else None,
        val_top1=float(best["val_top1"]) if best else None, val_top5=float(best["val_top5"]) if best else None,
        test_top1=test["top1"] if test else None, test_top5=test["top5"] if test else None,
        params=_params(run_dir / "deploy.prototxt"),
        caffemodel_mb=model_file.stat().st_size / 1e6 if model_file.is_file() else None,
        epochs=float(val[-1]["Epoch"]) if val else 0.0, wall_s=wall_seconds(rows), device=_device(run_dir),
        images_per_s=sum(rates) / len(rates) if rates else None)


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def markdown_table(rows: list[RunRow]) -> str:
    head = ("| model | train top-1 | val top-1 | val top-5 | test top-1 | test top-5 | params | caffemodel MB | "
            "epochs | wall time | images/s | device | run |")
    lines = [head, "|" + "|".join(["---"] + ["---:"] * 10 + ["---", "---"]) + "|"]
    for r in rows:
        lines.append(
            f"| {r.model} | {_pct(r.train_top1)} | {_pct(r.val_top1)} | {_pct(r.val_top5)} | {_pct(r.test_top1)} | "
            f"{_pct(r.test_top5)} | {'—' if r.params is None else f'{r.params:,}'} | "
            f"{'—' if r.caffemodel_mb is None else f'{r.caffemodel_mb:.1f}'} | {r.epochs:g} | {_duration(r.wall_s)} | "
            f"{'—' if r.images_per_s is None else f'{r.images_per_s:.0f}'} | {r.device} | {r.run} |")
    return "\n".join(lines)
