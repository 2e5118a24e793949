"""Training throughput of (a) our engine on the generated prototxt, (b) a hand-written PyTorch nn.Module of the
same network under the same kind of update, and (c) pycaffe when built, side by side in one run.

(b) is the reference that shows what the prototxt interpreter costs: the same layers (conv without bias ->
BatchNorm with affine scale/bias as Caffe's BatchNorm+Scale -> ReLU, Fire modules, TypeA 1x1-conv and TypeB
identity bypasses, ceil-mode max pools, dropout, global average pool) written directly, trained with
torch.optim.SGD (Nesterov momentum, weight decay, foreach updates). Every contender trains on one fixed batch
already on the device (Input-fed), so the figures are compute only: forward, backward, update. For each device
(CPU; CUDA when present) and batch size it prints images/s and, on CUDA, peak memory.

    python bench/train_speed.py [--models fullbypass8,fullbypass12] [--batches 64,256,1024] [--iters 5]
                                [--devices cpu,cuda] [--json out.json]

Default batches on the CPU are small (a 2-core CPU trains ~30 images/s); pass --cpu-batches to change them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from caffe_vs_torch import save_json, time_caffe, training_net

from squeezecaffe.engines.torchcaffe.options import EngineOptions
from squeezecaffe.engines.torchcaffe.solver import Solver

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
                   device: str) -> float:
    net = BypassSqueezeNet(model, classes).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.0002, foreach=True)
    loss_fn = nn.CrossEntropyLoss()
    labels = y.long()
    t0 = 0.0
    for i in range(warmup + iters):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), labels).backward()
        opt.step()
    _sync(device)
    return iters * len(x) / (time.perf_counter() - t0)


def time_engine(solver_path: Path, x: torch.Tensor, y: torch.Tensor, warmup: int, iters: int, device: str,
                reference_params: int) -> float:
    inputs = {"data": x, "label": y}
    solver = Solver.from_file(solver_path, options=EngineOptions(device=device), feed=lambda phase, it, k: inputs,
                              seed=1)
    trainable = sum(blob.numel() for _, _, blob, lr_mult, _ in solver.params if lr_mult)
    if trainable != reference_params:  # the two contenders must be the same network
        raise SystemExit(f"{solver_path}: {trainable:,} trainable parameters, the hand-written net {reference_params:,}")
    solver.step(warmup)
    _sync(device)
    t0 = time.perf_counter()
    solver.step(iters)
    _sync(device)
    return iters * len(x) / (time.perf_counter() - t0)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="fullbypass8,fullbypass12")
    p.add_argument("--devices", default="cpu,cuda")
    p.add_argument("--batches", default="64,256,1024", help="batch sizes on CUDA")
    p.add_argument("--cpu-batches", default="32")
    p.add_argument("--classes", type=int, default=200)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args()
    devices = [d for d in args.devices.split(",") if d == "cpu" or torch.cuda.is_available()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for device in devices:
            batches = args.cpu_batches if device == "cpu" else args.batches
            for model in args.models.split(","):
                for batch in (int(b) for b in batches.split(",")):
                    folder = Path(tmp) / f"{model}-{device}-{batch}"
                    folder.mkdir()
                    solver_path = training_net(model, batch, args.classes, folder)
                    rng = np.random.default_rng(0)
                    x_np = rng.normal(scale=50.0, size=(batch, 3, 64, 64)).astype(np.float32)
                    y_np = rng.integers(0, args.classes, size=batch).astype(np.float32)
                    x, y = torch.from_numpy(x_np).to(device), torch.from_numpy(y_np).to(device)
                    if device.startswith("cuda"):
                        torch.cuda.reset_peak_memory_stats()
                    params = parameter_count(BypassSqueezeNet(model, args.classes))
                    engine = time_engine(solver_path, x, y, args.warmup, args.iters, device, params)
                    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
                    reference = time_reference(model, args.classes, x, y, args.warmup, args.iters, device)
                    caffe = None
                    if device == "cpu":
                        from squeezecaffe.engines.pycaffe.runtime import caffe_available

                        if caffe_available():
                            caffe = time_caffe(solver_path, x_np, y_np, args.warmup, args.iters, folder)
                    rows.append({"device": device, "model": model, "batch": batch, "engine": round(engine, 1),
                                 "reference": round(reference, 1), "engine_over_reference": round(engine / reference, 3),
                                 "pycaffe": None if caffe is None else round(caffe, 1),
                                 "peak_gib": None if peak is None else round(peak, 2),
                                 "trainable_params": params})
    from squeezecaffe.train.rundir import cpu_name

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    machine = f"{cpu_name()} x{os.cpu_count()}, {gpu}, torch {torch.__version__}"
    print(f"\ntraining images/s, 64x64x3, {args.classes} classes, {args.iters} timed iterations ({machine})\n")
    print("| device | model | batch | (a) engine | (b) hand-written | a/b | (c) pycaffe | peak GiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        caffe = "—" if r["pycaffe"] is None else f"{r['pycaffe']:.1f}"
        peak = "—" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        print(f"| {r['device']} | {r['model']} | {r['batch']} | {r['engine']:.1f} | {r['reference']:.1f} | "
              f"{r['engine_over_reference']:.2f} | {caffe} | {peak} |")
    save_json(args.json, machine, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
