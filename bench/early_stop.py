"""The early stop on a user's folder of images: the same default run with it off and on, side by side.

For each ROOT (train/<class>/ and test/<class>/ image folders, no val: build-lmdb holds 10% of train out), through
the installed command, as a user types it:

    squeezecaffe build-lmdb ROOT DB [--gray]
    squeezecaffe train MODEL --data DB --engine torch --no-early-stop --run-dir OFF
    squeezecaffe train MODEL --data DB --engine torch --run-dir ON          # the default: early stop on
    squeezecaffe eval OFF --split test;  squeezecaffe eval ON --split test

    python bench/early_stop.py ROOT [ROOT ...] [--gray] [--model fullbypass8] [--out out/bench_early_stop]
                               [--json bench/results/early_stop.json] [--sequences tests/fixtures/val_sequences.json]

Prints per set: epochs run, wall time, best val top-1 and test top-1 of each run, the time the early stop saved,
and the share of an epoch that BatchNorm re-estimation, validation and the snapshot take (1 - training seconds /
epoch seconds, from log.csv). With --sequences, adds each off-run's validation sequence (and epoch length) to that
file, where tests/test_early_stop.py replays the early stop on it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

from _results import write_results
from _verbs import run_verb

from squeezecaffe.train.logs import read_log


def run_figures(run: Path) -> dict:
    """Epochs, seconds, validation sequence, epoch length and per-epoch overhead share of a finished run."""
    rows = read_log(run / "log.csv")
    val = [r for r in rows if r["Phase"] == "val"]
    recipe = json.loads((run / "run.json").read_text())["recipe"]
    per_epoch = int(val[0]["NumIters"])
    images_per_iter = recipe["batch_size"]
    shares, previous = [], 0.0
    for r in val[1:]:  # the first epoch also holds the start-up
        seconds = float(r["Seconds"]) - previous
        training = per_epoch * images_per_iter / float(r["images_per_s"])
        shares.append(1 - training / seconds)
        previous = float(r["Seconds"])
    test = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    top1 = [float(r["val_top1"]) for r in val]
    return {"epochs": len(val), "planned_epochs": recipe["epochs"], "seconds": float(val[-1]["Seconds"]),
            "iterations_per_epoch": per_epoch, "batch": images_per_iter,
            "val_top1": top1, "best_val_top1": max(top1), "best_epoch": 1 + top1.index(max(top1)),
            "overhead_share_median": statistics.median(shares) if shares else None,
            "test_top1": test["top1"], "events": [r["event"] for r in val]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("roots", nargs="+", help="folders with train/ and test/ class folders")
    p.add_argument("--gray", action="store_true", help="build-lmdb --gray")
    p.add_argument("--model", default="fullbypass8")
    p.add_argument("--out", default="out/bench_early_stop")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--sequences", help="add the off-runs' validation sequences to this JSON file (the replay's)")
    args = p.parse_args()
    out = Path(args.out)
    sets = []
    for root in args.roots:
        name = Path(root).name
        db = out / f"{name}-db"
        run_verb(["build-lmdb", root, str(db), *(["--gray"] if args.gray else []), "--force", "--quiet"])
        runs = {}
        for mode, flags in (("off", ["--no-early-stop"]), ("on", [])):
            run = out / f"{name}-{args.model}-{mode}"
            shutil.rmtree(run, ignore_errors=True)
            run_verb(["train", args.model, "--data", str(db), "--engine", "torch", *flags, "--run-dir", str(run),
                      "--quiet"], log=out / f"{name}-{mode}.log")
            run_verb(["eval", str(run), "--split", "test", "--quiet"])
            runs[mode] = run_figures(run)
        off, on = runs["off"], runs["on"]
        sets.append({"set": name, "model": args.model, "off": off, "on": on,
                     "time_share": on["seconds"] / off["seconds"],
                     "best_val_gap_points": 100 * (off["best_val_top1"] - on["best_val_top1"])})
    print(f"\n{args.model}, default recipe, torch engine; early stop off (--no-early-stop) and on (the default):\n")
    print("| set | epochs off / on (planned) | time off / on | on / off | best val off / on | test top-1 off / on | "
          "overhead per epoch off / on |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for s in sets:
        off, on = s["off"], s["on"]
        print(f"| {s['set']} | {off['epochs']} / {on['epochs']} ({off['planned_epochs']}) | {off['seconds']:.0f} s / "
              f"{on['seconds']:.0f} s | {s['time_share']:.2f} | {100 * off['best_val_top1']:.2f}% / "
              f"{100 * on['best_val_top1']:.2f}% | {100 * off['test_top1']:.2f}% / {100 * on['test_top1']:.2f}% | "
              f"{100 * off['overhead_share_median']:.0f}% / {100 * on['overhead_share_median']:.0f}% |")
    write_results(args.json, {"sets": sets}, runs=1, notes="one run per setting, seed 42; overhead is the median "
                  "over epochs 2.. of 1 - training seconds / epoch seconds")
    if args.sequences:
        path = Path(args.sequences)
        fixture = json.loads(path.read_text())
        for s in sets:
            fixture["runs"][f"{s['set']}-{s['model']}"] = {
                "what": f"bench/early_stop.py: {s['model']} with the default recipe on {s['set']} (torch engine, "
                        "--no-early-stop, seed 42)",
                "iterations_per_epoch": s["off"]["iterations_per_epoch"], "val_top1": s["off"]["val_top1"],
                "stops_after": s["on"]["epochs"]}
        path.write_text(json.dumps(fixture, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
