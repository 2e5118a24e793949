"""Tiny-ImageNet scale, end to end: N synthetic 64x64 JPEGs in 200 class folders -> build-lmdb -> one epoch of
`train MODEL --device DEVICE` through the normal command line, each step timed, and the projected wall time of the
seed study's ~30-epoch run beside its 24-36 hours.

The images are smooth random pictures (an 8x8 random image resized to 64x64 with cubic interpolation, plus noise),
written as JPEG like Tiny ImageNet's, so build-lmdb decodes what it would decode there; the labels are random, so
only the times mean anything. Every step is the verb a user runs:

    squeezecaffe build-lmdb ROOT DATA                      # ROOT/{train,val}/<class>/*.JPEG
    squeezecaffe train MODEL --data DATA --epochs 1 --batch-size B --device D --engine torch [train options]

    python bench/tiny_scale.py [--images 100000] [--val-images 10000] [--classes 200] [--model fullbypass12]
                               [--device cuda] [--batch-size 256] [--jobs N] [--out DIR] [--json FILE]
                               [-- further train options, e.g. --amp bf16 --data-in-memory]

On a CPU, try it small: `--images 2000 --val-images 400 --device cpu --batch-size 32`.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from _results import write_results
from _verbs import run_verb

SEED_EPOCHS = 30  # the seed study trained its nets for ~30 epochs on Tiny ImageNet
SEED_HOURS = "24-36"


def _write_class(args: tuple[Path, int, int, int, int]) -> int:
    """`count` JPEGs of one class into folder, drawn from a generator seeded by (seed, class)."""
    folder, label, count, size, seed = args
    rng = np.random.default_rng([seed, label])
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.int16)
        img += rng.integers(-12, 13, img.shape, dtype=np.int16)
        cv2.imwrite(str(folder / f"img_{i}.JPEG"), np.clip(img, 0, 255).astype(np.uint8),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
    return count


def synthetic_jpegs(root: Path, split: str, images: int, classes: int, size: int, seed: int, jobs: int) -> int:
    """ROOT/SPLIT/<class>/img_<i>.JPEG, `images` spread evenly over the classes (the first ones take the rest)."""
    per, extra = divmod(images, classes)
    work = [(root / split / f"n{label:08d}", label, per + (label < extra), size, seed + (split == "val"))
            for label in range(classes)]
    with ProcessPoolExecutor(jobs) as pool:
        return sum(pool.map(_write_class, work))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=100_000, help="training images (Tiny ImageNet: 100,000)")
    p.add_argument("--val-images", type=int, default=10_000, help="validation images (Tiny ImageNet: 10,000)")
    p.add_argument("--classes", type=int, default=200)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--model", default="fullbypass12")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes writing the JPEGs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/bench_tiny_scale")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("train_options", nargs=argparse.REMAINDER, help="after --: further train options")
    args = p.parse_args()
    extra = [a for a in args.train_options if a != "--"]
    out = Path(args.out)
    root, data, run = out / "images", out / "data", out / "run"
    for path in (root, data, run):
        shutil.rmtree(path, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    written = {split: synthetic_jpegs(root, split, n, args.classes, args.size, args.seed, args.jobs)
               for split, n in (("train", args.images), ("val", args.val_images))}
    jpeg_s = time.perf_counter() - started
    print(f"wrote {written['train']:,} + {written['val']:,} JPEGs in {jpeg_s:.1f} s", flush=True)

    _, lmdb_s = run_verb(["build-lmdb", str(root), str(data), "--quiet"], out / "build-lmdb.log")
    print(f"build-lmdb: {lmdb_s:.1f} s", flush=True)

    train_argv = ["train", args.model, "--data", str(data), "--epochs", "1", "--batch-size", str(args.batch_size),
                  "--device", args.device, "--engine", "torch", "--run-dir", str(run), "--quiet", *extra]
    _, train_s = run_verb(train_argv, out / "train.log")
    with (run / "log.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    val = next(r for r in rows if r["Phase"] == "val")
    trained = [r for r in rows if r["Phase"] == "train"]
    epoch_s = float(val["Seconds"])  # from the first iteration's start to the end of validation
    figures = {
        "images": written["train"], "val_images": written["val"], "classes": args.classes, "model": args.model,
        "device": args.device, "batch_size": args.batch_size, "train_options": extra,
        "jpeg_write_s": round(jpeg_s, 1), "build_lmdb_s": round(lmdb_s, 1), "train_command_s": round(train_s, 1),
        "epoch_s": round(epoch_s, 1), "training_s": round(float(trained[-1]["Seconds"]), 1),
        "images_per_s": round(float(val["images_per_s"]), 1),
        "projected_30_epochs_h": round(SEED_EPOCHS * epoch_s / 3600, 2),
    }
    print(f"\n$ squeezecaffe {' '.join(train_argv)}")
    print("| step | seconds |\n|---|---:|")
    print(f"| {written['train']:,} + {written['val']:,} synthetic JPEGs written ({args.jobs} processes) | {jpeg_s:.1f} |")
    print(f"| build-lmdb | {lmdb_s:.1f} |")
    print(f"| train: the whole command (start-up, 1 epoch, BatchNorm re-estimation, validation, snapshot) | "
          f"{train_s:.1f} |")
    print(f"| train: the epoch with its validation (log.csv) | {epoch_s:.1f} |")
    print(f"\ntraining {figures['images_per_s']:,.0f} images/s; {SEED_EPOCHS} such epochs: "
          f"{figures['projected_30_epochs_h']:.2f} h (the seed study: {SEED_HOURS} h)")
    if args.json:
        write_results(args.json, figures, runs=1, device=args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
