"""Accuracy benchmark: the Tiny-ImageNet SqueezeNet family on real photos (Fashion-MNIST), one schedule.

Trains original8, partialbypass8, fullbypass8 and fullbypass12 (sized for 28x28x1 inputs and 10
classes from the data directory) with the same data, schedule and seed, evaluates each on the 10,000
test images, and prints side by side the Table-3-style report plus the time each took to reach 90%
validation top-1 and its final test top-1. Every step calls what its verb calls (the demo's pipeline:
squeezecaffe.demo), so the figures are what a user gets.

    python bench/accuracy.py [--epochs 3] [--train-images 20000] [--device cpu] [--json out.json]

Published references for Fashion-MNIST: simple CNNs ~91-93% test top-1, ResNet-18 ~94.9%.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _results import write_results

from squeezecaffe.data_tools.mnist import DEFAULT_SOURCE
from squeezecaffe.demo import fashion_mnist_data, train_run
from squeezecaffe.engines.device import DeviceOptions
from squeezecaffe.evaluation.evaluate import evaluate_weights, format_eval
from squeezecaffe.train.logs import read_log
from squeezecaffe.train.report import markdown_table, run_row

MODELS = ("original8", "partialbypass8", "fullbypass8", "fullbypass12")


def seconds_to(run_dir: Path, target: float) -> float | None:
    """Wall seconds at the end of the first epoch whose validation top-1 reached `target`."""
    for row in read_log(run_dir / "log.csv"):
        if row["Phase"] == "val" and float(row["val_top1"]) >= target:
            return float(row["Seconds"])
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-images", type=int, default=20_000, help="stratified subset (0: all 57,000)")
    p.add_argument("--val-images", type=int, default=2_000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--engine", default="torch", help="torch (the README's figures) or caffe")
    p.add_argument("--src", default=str(DEFAULT_SOURCE))
    p.add_argument("--out", default="out/bench_accuracy")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args()
    out = Path(args.out)
    data = fashion_mnist_data(out, args.src, train_images=args.train_images or None, val_images=args.val_images)
    runs = []
    for model in args.models.split(","):
        run_dir = out / "runs" / model
        started = time.time()
        train_run(model, data, run_dir, epochs=args.epochs, batch_size=args.batch_size, engine=args.engine,
                  device=DeviceOptions(device=args.device))
        print(f"{model}: trained in {time.time() - started:.0f} s", flush=True)
        print(format_eval(evaluate_weights(run_dir, "test", device=args.device)))
        runs.append(run_dir)
    rows = [run_row(r) for r in runs]
    print("\n" + markdown_table(rows))
    print("\n| model | time to 90% val top-1 | final test top-1 | test top-5 |\n|---|---:|---:|---:|")
    figures = []
    for run_dir, row in zip(runs, rows, strict=True):
        t90 = seconds_to(run_dir, 0.90)
        print(f"| {row.model} | {'not reached' if t90 is None else f'{t90:.0f} s'} | {100 * row.test_top1:.2f} | "
              f"{100 * row.test_top5:.2f} |")
        figures.append({**row.__dict__, "seconds_to_90": t90})
    schedule = (f"{args.train_images or 57000} training images, {args.epochs} epochs, batch {args.batch_size}, "
                f"device {args.device}")
    print(f"\nschedule: {schedule}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_results(args.json, {"schedule": schedule, "runs": figures}, runs=1, device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
