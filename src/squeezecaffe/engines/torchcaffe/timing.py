"""`caffe time` for the torch engine: per-layer forward/backward milliseconds and images/s.

Whole-net figures time complete forward and backward passes. Per-layer figures run each layer on
its own, on inputs captured from a real forward, so one layer's time does not include another's
(Caffe times each layer inside the pass; running it alone gives the same work without relying on
autograd hook timing).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from squeezecaffe.engines.torchcaffe.layers import DataLayer, Input
from squeezecaffe.engines.torchcaffe.net import CaffeNet
from squeezecaffe.proto import pb


@dataclass
class LayerTime:
    name: str
    type: str
    forward_ms: float
    backward_ms: float


@dataclass
class TimingReport:
    batch: int
    iterations: int
    device: str
    forward_ms: float  # mean of whole-net forward passes
    backward_ms: float  # mean of whole-net backward passes
    layers: list[LayerTime] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.batch / ((self.forward_ms + self.backward_ms) / 1000.0)

    @property
    def forward_images_per_s(self) -> float:
        return self.batch / (self.forward_ms / 1000.0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, iterations: int) -> float:
    """Median milliseconds of `fn()` over `iterations` runs (after one warm-up run)."""
    fn()
    samples = []
    for _ in range(iterations):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        samples.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(samples)


def data_layers_as_inputs(net: pb.NetParameter, shapes: Mapping[str, tuple[int, ...]]) -> pb.NetParameter:
    """A copy where every Data layer is an Input layer with the given top shapes (synthetic timing data)."""
    out = pb.NetParameter()
    out.CopyFrom(net)
    for lp in out.layer:
        if lp.type == "Data":
            lp.type = "Input"
            lp.ClearField("data_param")
            lp.ClearField("transform_param")
            for top in lp.top:
                lp.input_param.shape.add().dim.extend(shapes[top])
    return out


def time_net(net: CaffeNet, inputs: Mapping[str, Tensor], iterations: int = 10, per_layer: bool = True) -> TimingReport:
    device = net.device
    backward = net.state.phase == pb.TRAIN

    def forward():
        return net(inputs)

    fwd_ms = _timed(forward, device, iterations)

    def forward_backward():
        result = net(inputs)
        if result.loss.requires_grad:
            result.loss.backward()

    bwd_ms = max(0.0, _timed(forward_backward, device, iterations) - fwd_ms) if backward else 0.0
    report = TimingReport(net.batch_size(), iterations, str(device), fwd_ms, bwd_ms)
    if not per_layer:
        return report
    with torch.no_grad():
        blobs = net(inputs).blobs
    # each layer's bottoms as they were when it ran (in-place layers rebind names, so replay in order)
    seen: dict[str, Tensor] = {name: t for name, t in inputs.items()}
    for lp, module in zip(net.filtered.layer, net.layers, strict=True):
        if isinstance(module, Input | DataLayer):
            for top in lp.top:
                seen[top] = blobs[top]
            continue
        bottoms = [seen[b].detach() for b in lp.bottom]
        with torch.no_grad():
            tops = module(bottoms)
        f_ms = _timed(lambda m=module, b=bottoms: m(b), device, iterations)
        b_ms = 0.0
        if backward:
            grad_in = [b.clone().requires_grad_(b.is_floating_point()) for b in bottoms]
            outs = module(grad_in)
            pairs = [(o, torch.ones_like(o)) for o in outs if o.requires_grad]
            if pairs:
                def run_backward(pairs=pairs):
                    torch.autograd.backward([p[0] for p in pairs], [p[1] for p in pairs], retain_graph=True)

                b_ms = _timed(run_backward, device, iterations)
        report.layers.append(LayerTime(lp.name, lp.type, f_ms, b_ms))
        for top, t in zip(lp.top, tops, strict=True):
            seen[top] = t
    return report


def format_report(report: TimingReport) -> str:
    lines = [f"{'layer':28s} {'type':16s} {'forward ms':>11s} {'backward ms':>12s}"] if report.layers else []
    for lt in report.layers:
        lines.append(f"{lt.name:28s} {lt.type:16s} {lt.forward_ms:11.3f} {lt.backward_ms:12.3f}")
    lines.append(f"average forward pass: {report.forward_ms:.2f} ms; backward pass: {report.backward_ms:.2f} ms "
                 f"(batch {report.batch}, {report.iterations} iterations, median, {report.device})")
    if report.backward_ms:
        lines.append(f"training throughput: {report.images_per_s:.1f} images/s; forward only: "
                     f"{report.forward_images_per_s:.1f} images/s")
    else:
        lines.append(f"forward throughput: {report.forward_images_per_s:.1f} images/s")
    return "\n".join(lines)
