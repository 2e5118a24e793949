"""CPU training speed with and without the engine's malloc setting (engines/torchcaffe/host_memory.py).

The setting is process-wide, so bench/train_speed.py, whose contenders share one process, measures both of them
under it. Here every timing runs in a process of its own: (a) our engine and (b) the hand-written module of
bench/train_speed.py, each with malloc as glibc sets it (SQUEEZECAFFE_MALLOC=system) and with the setting
(the engine applies it itself; the hand-written module gets the same call), on the same fixed batch. The rounds
alternate the four contenders, their order rotating; each figure is the best of --repeats.

    python bench/host_memory.py [--models fullbypass8,fullbypass12] [--batch 32] [--iters 5] [--repeats 3]
                                [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import spread, write_results
from _timing import add_timing_options, fixed_batch

CONTENDERS = [("engine", "system"), ("engine", "kept"), ("reference", "system"), ("reference", "kept")]


def one_timing(model: str, contender: str, batch: int, warmup: int, iters: int, classes: int) -> float:
    """Runs in the child process: images/s of one contender."""
    import torch
    from caffe_vs_torch import training_net
    from train_speed import BypassSqueezeNet, parameter_count, time_engine, time_reference

    from squeezecaffe.engines.torchcaffe.host_memory import keep_freed_host_memory
    from squeezecaffe.engines.torchcaffe.options import EngineOptions

    x, y = map(torch.from_numpy, fixed_batch(batch, classes))
    if contender == "reference":
        keep_freed_host_memory()  # does nothing under SQUEEZECAFFE_MALLOC=system
        return time_reference(model, classes, x, y, warmup, iters, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        solver_path = training_net(model, batch, classes, Path(tmp))
        return time_engine(solver_path, x, y, warmup, iters, EngineOptions(device="cpu"),
                           parameter_count(BypassSqueezeNet(model, classes)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_timing_options(p, models="fullbypass8,fullbypass12", iters=5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--one", nargs=2, metavar=("MODEL", "CONTENDER"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(one_timing(*args.one, args.batch, args.warmup, args.iters, args.classes))
        return 0
    rows, spreads = [], {}
    for model in args.models.split(","):
        timings: dict[tuple[str, str], list[float]] = {c: [] for c in CONTENDERS}
        for repeat in range(args.repeats):
            k = repeat % len(CONTENDERS)
            for contender, malloc in CONTENDERS[k:] + CONTENDERS[:k]:
                env = {**os.environ, "SQUEEZECAFFE_MALLOC": "system" if malloc == "system" else "kept"}
                out = subprocess.run([sys.executable, __file__, "--one", model, contender, "--batch", str(args.batch),
                                      "--warmup", str(args.warmup), "--iters", str(args.iters),
                                      "--classes", str(args.classes)], env=env, check=True, capture_output=True,
                                     text=True).stdout
                timings[(contender, malloc)].append(round(float(out.split()[-1]), 1))
        best = {c: max(v) for c, v in timings.items()}
        rows.append({"model": model, "batch": args.batch,
                     "engine_system": best[("engine", "system")], "engine_kept": best[("engine", "kept")],
                     "engine_gain": round(best[("engine", "kept")] / best[("engine", "system")], 2),
                     "reference_system": best[("reference", "system")],
                     "reference_kept": best[("reference", "kept")],
                     "reference_gain": round(best[("reference", "kept")] / best[("reference", "system")], 2)})
        spreads.update({f"{model}/{c}/{m}": spread(v) for (c, m), v in timings.items()})
    print(f"\ntraining images/s on the CPU, batch {args.batch}, each timing in a process of its own, best of "
          f"{args.repeats}\n")
    print("| model | (a) engine, glibc default | (a) engine, freed memory kept | gain | (b) hand-written, default | "
          "(b) hand-written, kept | gain |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['engine_system']:.1f} | {r['engine_kept']:.1f} | {r['engine_gain']:.2f} | "
              f"{r['reference_system']:.1f} | {r['reference_kept']:.1f} | {r['reference_gain']:.2f} |")
    write_results(args.json, {"rows": rows}, runs=args.repeats, spreads=spreads,
                  notes="each timing a process of its own; the four contenders alternate within each round, "
                        "their order rotating between rounds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
