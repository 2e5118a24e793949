"""Training throughput of (a) our engine on the generated prototxt, (b) a hand-written PyTorch nn.Module of the
same network under the same kind of update, and (c) pycaffe when built, side by side in one run.

(b) is the reference that shows what the prototxt interpreter costs: the same layers (conv without bias ->
BatchNorm with affine scale/bias as Caffe's BatchNorm+Scale -> ReLU, Fire modules, TypeA 1x1-conv and TypeB
identity bypasses, ceil-mode max pools, dropout, global average pool) written directly, trained with
torch.optim.SGD (Nesterov momentum, weight decay, foreach updates). These contenders train on one fixed batch
already on the device (Input-fed), so their figures are compute only: forward, backward, update.

Then (a) again fed by a Data layer from a real LMDB of random 64x64 images: through the DataLoader (worker
processes; on CUDA with the transform on the GPU) and from the database held in device memory
(--data-in-memory). fed / compute-only below 1 is the share of the time spent waiting for data (its
complement); on a busy 2-core CPU run-to-run noise is larger than that share.
For each device (CPU; CUDA when present), batch size, precision (`--amps fp32,bf16`: autocast of the forward, as
`train --amp`) and memory layout (`--layouts nchw,nhwc`: channels-last, as `train --channels-last`; both contenders
alike) it prints images/s and, on CUDA, peak memory.

    python bench/train_speed.py [--models fullbypass8,fullbypass12] [--batches 64,256,1024] [--iters 5] [--repeats 3]
                                [--devices cpu,cuda] [--amps fp32,bf16] [--layouts nchw,nhwc] [--workers 4]
                                [--records 4096] [--json out.json]

Default batches on the CPU are small (a 2-core CPU trains ~30 images/s); pass --cpu-batches to change them.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import spread, write_results
from _timing import add_timing_options, fixed_batch
from caffe_vs_torch import time_caffe, training_net

from squeezecaffe.data_tools.decode import raw_datum_bytes
from squeezecaffe.data_tools.lmdb_io import AtomicLmdbWriter, LmdbAppender, datum_key
from squeezecaffe.engines.pycaffe.runtime import caffe_available
from squeezecaffe.engines.torchcaffe.options import EngineOptions
from squeezecaffe.engines.torchcaffe.solver import Solver
from squeezecaffe.proto import parse_text, pb, read_text, to_text

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# (squeeze, expand) per Fire, bypass kind per Fire ("conv" = TypeA, "id" = TypeB), pools after these Fires
ARCH = {
    "fullbypass8": dict(fires=[(16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256), (64, 256)],
                        pools_after=(4, 8), dropout=False),
    "fullbypass12": dict(fires=[(16, 64)] * 4 + [(32, 128)] * 2 + [(48, 192)] * 4 + [(64, 256)] * 2,
                         pools_after=(6, 11), dropout=True),
}


def conv_bn(cin: int, cout: int, k: int, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand: int, bypass: str) -> None:
        super().__init__()
        self.squeeze = conv_bn(cin, squeeze, 1)
        self.expand1x1 = conv_bn(squeeze, expand, 1)
        self.expand3x3 = conv_bn(squeeze, expand, 3)
        self.bypass = conv_bn(cin, 2 * expand, 1, relu=False) if bypass == "conv" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze(x)
        return torch.cat([self.expand1x1(s), self.expand3x3(s)], 1) + self.bypass(x)


class BypassSqueezeNet(nn.Module):
    """fullbypass8/12 for 64x64x3 inputs, written by hand (Fires 2, 4, 6, ... carry the 1x1-conv bypass)."""

    def __init__(self, model: str, classes: int) -> None:
        super().__init__()
        arch = ARCH[model]
        layers: list[nn.Module] = [conv_bn(3, 96, 3), nn.MaxPool2d(3, 2, ceil_mode=True)]
        cin = 96
        for i, (squeeze, expand) in enumerate(arch["fires"]):
            number = i + 2
            layers.append(Fire(cin, squeeze, expand, "conv" if number % 2 == 0 else "id"))
            cin = 2 * expand
            if number in arch["pools_after"]:
                layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
        if arch["dropout"]:
            layers.append(nn.Dropout(0.5))
        layers += [conv_bn(cin, classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_reference(model: str, classes: int, x: torch.Tensor, y: torch.Tensor, warmup: int, iters: int,
                   device: str, amp: str | None = None, channels_last: bool = False) -> float:
    net = BypassSqueezeNet(model, classes).to(device)
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.0002, foreach=True)
    loss_fn = nn.CrossEntropyLoss()
    labels = y.long()
    autocast = torch.autocast(torch.device(device).type, dtype=AMP_DTYPES[amp]) if amp else contextlib.nullcontext()
    t0 = 0.0
    for i in range(warmup + iters):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(net(x), labels)
        loss.backward()
        opt.step()
    _sync(device)
    return iters * len(x) / (time.perf_counter() - t0)


def time_engine(solver_path: Path, x: torch.Tensor, y: torch.Tensor, warmup: int, iters: int,
                options: EngineOptions, reference_params: int) -> float:
    inputs = {"data": x, "label": y}
    device = options.device
    solver = Solver.from_file(solver_path, options=options, feed=lambda phase, it, k: inputs, seed=1)
    trainable = sum(blob.numel() for _, _, blob, lr_mult, _ in solver.params if lr_mult)
    if trainable != reference_params:  # the two contenders must be the same network
        raise SystemExit(f"{solver_path}: {trainable:,} trainable parameters, the hand-written net {reference_params:,}")
    solver.step(warmup)
    _sync(device)
    t0 = time.perf_counter()
    solver.step(iters)
    _sync(device)
    return iters * len(x) / (time.perf_counter() - t0)


def random_lmdb(path: Path, records: int, classes: int) -> Path:
    """An LMDB of raw Datums: smooth random 64x64 BGR images (as JPEG-decoded photos look), random labels."""
    import cv2

    rng = np.random.default_rng(0)
    writer = AtomicLmdbWriter(path)
    appender = LmdbAppender(writer.tmp)
    pairs = []
    for i in range(records):
        img = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (64, 64), interpolation=cv2.INTER_CUBIC)
        pairs.append((datum_key(i, f"img_{i}.JPEG"), raw_datum_bytes(img, int(rng.integers(classes)))))
    appender.append(pairs)
    appender.close()
    return writer.commit()


def data_fed_solver(solver_path: Path, db: Path) -> Path:
    """The bench net with its Input layer swapped for a Data layer on `db` (mirror and mean values, as netgen's)."""
    net = read_text(Path(read_text(solver_path, pb.SolverParameter).net), pb.NetParameter)
    batch = net.layer[0].input_param.shape[0].dim[0]
    data = parse_text(f'name: "data" type: "Data" top: "data" top: "label" transform_param {{ mirror: true '
                      f'mean_value: 104 mean_value: 117 mean_value: 123 }} data_param {{ source: "{db}" '
                      f'batch_size: {batch} backend: LMDB }}', pb.LayerParameter)
    layers = [data, *(lp for lp in net.layer if lp.type != "Input")]  # the data and the label Inputs
    del net.layer[:]
    net.layer.extend(layers)
    path = solver_path.with_name("bench_data_net.prototxt")
    path.write_text(to_text(net))
    sp = read_text(solver_path, pb.SolverParameter)
    sp.net = str(path)
    fed = solver_path.with_name("bench_data_solver.prototxt")
    fed.write_text(to_text(sp))
    return fed


def time_engine_fed(solver_path: Path, batch: int, warmup: int, iters: int, options: EngineOptions) -> float:
    solver = Solver.from_file(solver_path, options=options, seed=1)
    solver.step(warmup)
    _sync(options.device)
    t0 = time.perf_counter()
    solver.step(iters)
    _sync(options.device)
    return iters * batch / (time.perf_counter() - t0)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_timing_options(p, models="fullbypass8,fullbypass12", iters=5)
    p.add_argument("--devices", default="cpu,cuda")
    p.add_argument("--batches", default="64,256,1024", help="batch sizes on CUDA")
    p.add_argument("--cpu-batches", default="32")
    p.add_argument("--amps", default="fp32", help="precisions: fp32, bf16, fp16 (autocast), comma-separated")
    p.add_argument("--layouts", default="nchw", help="memory formats: nchw, nhwc (channels-last), comma-separated")
    p.add_argument("--repeats", type=int, default=3, help="timings per contender; the best counts")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="DataLoader workers (fed runs)")
    p.add_argument("--records", type=int, default=4096, help="images in the random LMDB of the fed runs")
    args = p.parse_args()
    devices = [d for d in args.devices.split(",") if d == "cpu" or torch.cuda.is_available()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        db = random_lmdb(Path(tmp) / "random_lmdb", args.records, args.classes)
        for device in devices:
            batches = args.cpu_batches if device == "cpu" else args.batches
            for model, batch, amp, layout in itertools.product(
                    args.models.split(","), (int(b) for b in batches.split(",")), args.amps.split(","),
                    args.layouts.split(",")):
                amp_name = None if amp == "fp32" else amp
                channels_last = layout == "nhwc"
                folder = Path(tmp) / f"{model}-{device}-{batch}-{amp}-{layout}"
                folder.mkdir()
                solver_path = training_net(model, batch, args.classes, folder)
                x_np, y_np = fixed_batch(batch, args.classes)
                x, y = torch.from_numpy(x_np).to(device), torch.from_numpy(y_np).to(device)
                if device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                params = parameter_count(BypassSqueezeNet(model, args.classes))
                fed_solver = data_fed_solver(solver_path, db)
                on_gpu = device.startswith("cuda")
                speed = dict(device=device, amp=amp_name, channels_last=channels_last)
                contenders = {
                    "engine": partial(time_engine, solver_path, x, y, args.warmup, args.iters, EngineOptions(**speed),
                                      params),
                    "reference": partial(time_reference, model, args.classes, x, y, args.warmup, args.iters, device,
                                         amp_name, channels_last),
                    "loader": partial(time_engine_fed, fed_solver, batch, args.warmup, args.iters, EngineOptions(
                        **speed, workers=args.workers, gpu_transform=on_gpu)),
                    "in_memory": partial(time_engine_fed, fed_solver, batch, args.warmup, args.iters,
                                         EngineOptions(**speed, data_in_memory=True)),
                }
                if device == "cpu" and caffe_available() and not amp_name and not channels_last:
                    contenders["caffe"] = partial(time_caffe, solver_path, x_np, y_np, args.warmup, args.iters,
                                                  folder)
                # Best of --repeats, the contenders alternating within each repeat: a shared machine's
                # speed drifts, and every contender should meet the same machine. The order rotates from one
                # repeat to the next, so no contender always follows the same one (Caffe's BLAS threads keep
                # spinning for a while after its last call, which slows whoever comes next).
                best: dict[str, float] = {}
                timings: dict[str, list[float]] = {name: [] for name in contenders}
                peak = None
                names = list(contenders)
                for repeat in range(args.repeats):
                    for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                        timings[name].append(contenders[name]())
                        best[name] = max(timings[name])
                        if name == "engine" and on_gpu:
                            peak = torch.cuda.max_memory_allocated() / 2**30
                            torch.cuda.reset_peak_memory_stats()
                engine, reference, loader, in_memory = (best[k] for k in ("engine", "reference", "loader",
                                                                           "in_memory"))
                caffe = best.get("caffe")
                rows.append({"device": device, "model": model, "batch": batch, "amp": amp, "layout": layout,
                             "engine": round(engine, 1),
                             "engine_lmdb_loader": round(loader, 1), "engine_in_memory": round(in_memory, 1),
                             "loader_over_compute": round(loader / engine, 3),
                             "in_memory_over_compute": round(in_memory / engine, 3),
                             "loader_workers": args.workers,
                             "reference": round(reference, 1), "engine_over_reference": round(engine / reference, 3),
                             "pycaffe": None if caffe is None else round(caffe, 1),
                             "peak_gib": None if peak is None else round(peak, 2),
                             "trainable_params": params,
                             "timings": {k: [round(v, 1) for v in vs] for k, vs in timings.items()}})
    from squeezecaffe.train.rundir import cpu_name

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    machine = f"{cpu_name()} x{os.cpu_count()}, {gpu}, torch {torch.__version__}"
    print(f"\ntraining images/s, 64x64x3, {args.classes} classes, best of {args.repeats} x {args.iters} timed "
          f"iterations ({machine})\n")
    print("| device | model | batch | precision | layout | (a) engine | (b) hand-written | a/b | (c) pycaffe | "
          "(a) + LMDB loader (/ a) | (a) + in-memory data (/ a) | peak GiB |")
    print("|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        caffe = "—" if r["pycaffe"] is None else f"{r['pycaffe']:.1f}"
        peak = "—" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        print(f"| {r['device']} | {r['model']} | {r['batch']} | {r['amp']} | {r['layout']} | {r['engine']:.1f} | "
              f"{r['reference']:.1f} | "
              f"{r['engine_over_reference']:.2f} | {caffe} | {r['engine_lmdb_loader']:.1f} "
              f"({r['loader_over_compute']:.2f}) | {r['engine_in_memory']:.1f} ({r['in_memory_over_compute']:.2f}) | "
              f"{peak} |")
    print(f"\nLMDB loader: {args.workers} worker processes; (/ a) = fed / compute-only: 1 - it is the data wait")
    spreads = {f"{r['device']}/{r['model']}/{r['batch']}/{r['amp']}/{r['layout']}/{k}": spread(vs)
               for r in rows for k, vs in r["timings"].items()}
    write_results(args.json, {"rows": rows}, runs=args.repeats, device=",".join(devices), spreads=spreads,
                  notes=f"each figure the best of --repeats {args.repeats} timings of {args.iters} iterations, "
                        "the contenders alternating within each round, their order rotating between rounds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
