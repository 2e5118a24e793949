"""Robustness of the default recipe: does every (data size, batch, model) run end with a good model?

Fashion-MNIST training subsets of 1k / 5k / 15k images x batch 16 / 64 / 256 x original8 / fullbypass8 /
fullbypass12, each trained with the default recipe (seeded, torch engine), validated on the same 2,000 held-out
images. A run is flagged when it ends at chance or more than 2 points below its own best epoch. Everything goes
through the normal verbs, so the figures are what a user gets.

    python bench/robustness.py [--sizes 1000,5000,15000] [--batches 16,64,256] [--models ...] [--epochs N]
                               [--json out.json]

`--epochs` caps each run (short epochs allowed on CPU); without it the recipe's own length is used.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _results import write_results

from squeezecaffe.data_tools.mnist import DEFAULT_SOURCE
from squeezecaffe.demo import fashion_mnist_data, train_run
from squeezecaffe.errors import UserError
from squeezecaffe.train.logs import read_log

CHANCE_MARGIN = 0.02  # within 2 points of 10%: at chance
DROP_LIMIT = 0.02  # ends more than 2 points below its best epoch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,5000,15000")
    p.add_argument("--batches", default="16,64,256")
    p.add_argument("--models", default="original8,fullbypass8,fullbypass12")
    p.add_argument("--epochs", type=int, help="cap on each run's epochs (default: the recipe's)")
    p.add_argument("--src", default=str(DEFAULT_SOURCE))
    p.add_argument("--out", default="out/bench_robustness")
    p.add_argument("--json", help="also write the table to this JSON file")
    args = p.parse_args()
    out = Path(args.out)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        # the default build: only the training split shuffled, as a user's build-lmdb gives it
        data = fashion_mnist_data(out, args.src, train_images=size, val_images=2000, name=f"data-{size}",
                                  shuffle="train")
        for batch in (int(b) for b in args.batches.split(",")):
            for model in args.models.split(","):
                run = out / "runs" / f"{model}-{size}-b{batch}"
                start = time.time()
                try:
                    train_run(model, data, run, epochs=args.epochs, batch_size=batch)
                    code = 0
                except UserError as exc:  # a run that stops (the guard gave up) is a finding, not a crash
                    print(f"{model} {size} b{batch}: {exc}", flush=True)
                    code = 2
                val = [r for r in read_log(run / "log.csv") if r["Phase"] == "val"] if (run / "log.csv").exists() else []
                tops = [float(r["val_top1"]) for r in val]
                final, best = (tops[-1], max(tops)) if tops else (0.0, 0.0)
                flags = []
                if code != 0:
                    flags.append(f"exit {code}")
                if final <= 0.1 + CHANCE_MARGIN:
                    flags.append("at chance")
                if best - final > DROP_LIMIT:
                    flags.append(f"{100 * (best - final):.1f} below best")
                events = sum(1 for r in read_log(run / "log.csv") if r["Phase"] == "event") if val else 0
                row = {"model": model, "train_images": size, "batch": batch, "epochs": len(tops),
                       "final_top1": final, "best_top1": best, "guard_recoveries": events,
                       "seconds": round(time.time() - start, 1), "flags": flags}
                rows.append(row)
                print(f"{model:14s} {size:6d} b{batch:<4d} {len(tops):3d} ep  final {100 * final:6.2f}%  best "
                      f"{100 * best:6.2f}%  guard {events}  {row['seconds']:7.1f} s  {'; '.join(flags) or 'ok'}",
                      flush=True)
    print("\n| model | train images | batch | epochs | final val top-1 | best val top-1 | guard | seconds | flags |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['model']} | {r['train_images']:,} | {r['batch']} | {r['epochs']} | {100 * r['final_top1']:.2f} | "
              f"{100 * r['best_top1']:.2f} | {r['guard_recoveries']} | {r['seconds']:.0f} | "
              f"{'; '.join(r['flags']) or 'ok'} |")
    flagged = [r for r in rows if r["flags"]]
    print(f"\n{len(rows)} runs, {len(flagged)} flagged")
    if args.json:
        write_results(args.json, {"rows": rows}, runs=1)
    return 1 if flagged else 0


if __name__ == "__main__":
    sys.exit(main())
