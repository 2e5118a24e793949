"""`make demo`'s figures, measured as a user gets them: the wall time of `squeezecaffe demo` from an empty output
folder (the PNG tree kept, as a re-run keeps it), its test top-1 and the training speed from the run's log.

    python bench/demo.py [--out out/bench_demo] [--full] [--device cpu] [--runs 1] [--json bench/results/demo.json]

Each run removes the data directory and the run, keeps the Fashion-MNIST PNG tree (its import is a one-time step
that `make demo` reuses too) and runs the verb in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

from _results import spread, write_results
from _verbs import run_verb

from squeezecaffe.train.report import run_row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/bench_demo")
    p.add_argument("--full", action="store_true", help="the full schedule (make demo FULL=1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args()
    out = Path(args.out)
    schedule = "full" if args.full else "short"
    walls, rows = [], []
    for _ in range(args.runs):
        for stale in out.glob("fashion-mnist-*"):
            if stale.is_dir() and stale.name != "fashion-mnist-png":
                shutil.rmtree(stale)
        shutil.rmtree(out / "runs", ignore_errors=True)
        _, seconds = run_verb(["demo", "--out", str(out), *(["--full"] if args.full else []),
                               *(["--device", args.device] if args.device != "cpu" else [])])
        walls.append(seconds)
        rows.append(dataclasses.asdict(run_row(out / "runs" / f"fullbypass8-{schedule}")))
    tops = [100 * r["test_top1"] for r in rows]
    figures = {"schedule": schedule, "test_top1_percent": [round(t, 2) for t in tops],
               "test_top5_percent": [round(100 * r["test_top5"], 2) for r in rows],
               "demo_seconds": [round(w) for w in walls], "train_seconds": [round(r["wall_s"]) for r in rows],
               "train_images_per_s": [round(r["images_per_s"]) for r in rows]}
    print(f"\n`make demo{' FULL=1' if args.full else ''}` ({schedule} schedule), {args.runs} run(s):\n")
    print("| run | test top-1 | demo wall time | training | images/s |")
    print("|---:|---:|---:|---:|---:|")
    for i, (row, wall) in enumerate(zip(rows, walls, strict=True)):
        print(f"| {i + 1} | {100 * row['test_top1']:.2f}% | {wall:.0f} s | {row['wall_s']:.0f} s | "
              f"{row['images_per_s']:.0f} |")
    write_results(args.json, figures, runs=args.runs, device=args.device,
                  spreads={"demo_seconds": spread(walls), "test_top1_percent": spread(tops)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
