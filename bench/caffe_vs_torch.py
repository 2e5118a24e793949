"""Training speed of real Caffe (our `make caffe` build, or the CUDA build/bundle with --device cuda) and the torch
engine, side by side on one device.

Both run the same generated net (the model's deploy net at 64x64x3 made trainable from Input blobs by
`tests/inputnet.input_training_net`, Dropout kept) under the same Nesterov + poly solver (each from its
own filler draws) on one fixed random batch fed through Input layers, so the figures compare the engines'
compute (forward, backward, update) and nothing else. Warm-up iterations are not timed.

    python bench/caffe_vs_torch.py [--models fullbypass8] [--batch 32] [--iters 10] [--device cuda] [--json out.json]

With --device cuda, real Caffe runs in GPU mode on the CUDA build (SQUEEZECAFFE_CAFFE_HOME=bundle on a GPU machine
without Caffe's dependencies) and the torch engine on the same GPU.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: tests.inputnet
from _results import write_results
from _timing import add_timing_options, fixed_batch

from squeezecaffe.engines.pycaffe.runtime import GlogTap, import_caffe, select_device
from squeezecaffe.engines.torchcaffe.options import EngineOptions
from squeezecaffe.engines.torchcaffe.solver import Solver
from squeezecaffe.errors import UserError
from squeezecaffe.netgen.registry import get_model
from squeezecaffe.proto import to_text
from squeezecaffe.solvers.generate import generate
from squeezecaffe.solvers.settings import resolve
from tests.inputnet import input_training_net

SOLVER = 'type: "Nesterov" base_lr: 0.01 lr_policy: "poly" power: 1.0 momentum: 0.9 weight_decay: 0.0002 max_iter: 100000'


def training_net(model: str, batch: int, classes: int, folder: Path) -> Path:
    spec = get_model(model)
    cfg, sched = resolve(spec, input_size=(64, 64), batch_size=batch, classes=classes)
    net = input_training_net(generate(spec, folder, cfg, sched).deploy, batch)
    path = folder / "bench_net.prototxt"
    path.write_text(to_text(net))
    (folder / "bench_solver.prototxt").write_text(f'net: "{path}" {SOLVER}\n')
    return folder / "bench_solver.prototxt"


def time_caffe(solver_path: Path, x: np.ndarray, y: np.ndarray, warmup: int, iters: int, folder: Path,
               device: str = "cpu") -> float:
    caffe = import_caffe(cuda=device.startswith("cuda"))
    select_device(caffe, device)
    with GlogTap(folder / "caffe.log"):
        solver = caffe.get_solver(str(solver_path))
        solver.net.blobs["data"].data[...] = x
        solver.net.blobs["label"].data[...] = y
        solver.step(warmup)
        t0 = time.perf_counter()
        solver.step(iters)
        seconds = time.perf_counter() - t0
    del solver
    gc.collect()
    return iters * len(x) / seconds


def time_torch(solver_path: Path, x: np.ndarray, y: np.ndarray, warmup: int, iters: int, device: str = "cpu") -> float:
    inputs = {"data": torch.from_numpy(x).to(device), "label": torch.from_numpy(y).to(device)}
    solver = Solver.from_file(solver_path, options=EngineOptions(device=device), feed=lambda phase, it, k: inputs,
                              seed=1)
    solver.step(warmup)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    solver.step(iters)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return iters * len(x) / (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_timing_options(p, models="fullbypass8", iters=10)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--keep", help="work in this folder (nets, caffe.log) instead of a temporary one")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (both engines)")
    args = p.parse_args()
    x, y = fixed_batch(args.batch, args.classes)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.keep) if args.keep else tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            folder = Path(tmp) / model
            folder.mkdir()
            solver_path = training_net(model, args.batch, args.classes, folder)
            caffe_rate = time_caffe(solver_path, x, y, args.warmup, args.iters, folder, args.device)
            torch_rate = time_torch(solver_path, x, y, args.warmup, args.iters, args.device)
            rows.append({"model": model, "batch": args.batch, "device": args.device,
                         "pycaffe_images_per_s": round(caffe_rate, 1),
                         "torch_images_per_s": round(torch_rate, 1), "torch_over_caffe": round(torch_rate / caffe_rate, 2)})
    from squeezecaffe.train.rundir import cpu_name

    machine = f"{cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__} " \
              f"({torch.get_num_threads()} threads)"
    if args.device.startswith("cuda"):
        machine += f", {torch.cuda.get_device_name(torch.device(args.device))} (CUDA {torch.version.cuda})"
    print(f"\n{args.device} training speed, 64x64x3, {args.classes} classes, batch {args.batch}, {args.iters} timed iterations "
          f"({machine})\n")
    print("| model | pycaffe images/s | torch engine images/s | torch / pycaffe |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['pycaffe_images_per_s']:.1f} | {r['torch_images_per_s']:.1f} | "
              f"{r['torch_over_caffe']:.2f}x |")
    write_results(args.json, {"rows": rows}, runs=1, device=args.device,
                  notes=f"{args.iters} timed iterations after {args.warmup} warm-up ones")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except UserError as exc:  # no Caffe, no CUDA libraries, no GPU: one line, as the CLI says it
        print(f"caffe_vs_torch: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
