"""A float64 referee for comparing two float32 engines on a whole net, instead of one machine's tolerance.

Two float32 engines that sum in different orders disagree by rounding, and how much depends on the BLAS kernels,
the thread count and the instruction set of the machine. A fixed tolerance between them therefore encodes one
machine. The referee is the same forward/backward computed by our engine in float64 (same weights, same input):

- `Referee.check` asks, per blob, that our float32 result is at least as exact as Caffe's own:
  ``|ours32 - ref64| <= max(2 * |caffe32 - ref64|, FLOOR * |ref64|)`` in the Euclidean norm.
- It also asks that Caffe's float32 result is within float32 reach of the referee
  (``|caffe32 - ref64| <= REFEREE_TOL * |ref64|``). Without this a wrong engine would pass: the referee is our
  engine, so a semantic error (a BatchNorm eps off by 1e-3, a missing ReLU) moves the referee away from Caffe by
  far more than rounding, while our float32 result stays next to the (wrong) referee.

Both conditions rest on the same computation path: a ReLU or max-pool decision within rounding of its boundary
goes one way in one engine and the other way in another, and moves every gradient below it by ~1e-3 — a real
difference between the float32 runs, not a rounding error. `Decisions` reads every such decision out of each run
(ReLU: which outputs are positive; MAX pooling: which element each window picks) so a test can insist that all three
runs took the same path before it compares numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from squeezecaffe.proto import pb

FLOAT32_UNIT = 2.0**-24  # unit roundoff of float32
# The floor is for blobs that Caffe happens to compute almost exactly: a float32 dot product of K terms is off by
# about sqrt(K) units in a random summation order (K = 3x3x512 = 4,608 at most in these nets, sqrt ~ 68), so 128
# units of the blob's norm (~7.6e-6) is what any correct float32 engine can land at.
FLOOR = 128 * FLOAT32_UNIT
# ~840 units: Caffe's float32 result lies within this of the float64 referee when both compute one function along
# one path. A semantic difference shows far above it (BatchNorm eps + 1e-3 moves each BN output by 5e-4).
REFEREE_TOL = 1e-4


@dataclass
class Distance:
    ours: float  # |ours32 - ref64|
    caffe: float  # |caffe32 - ref64|
    scale: float  # |ref64|


def distance(ours, caffe, ref) -> Distance:
    ours, caffe, ref = (np.asarray(a, np.float64).ravel() for a in (ours, caffe, ref))
    assert ours.shape == caffe.shape == ref.shape, f"shapes {ours.shape} {caffe.shape} {ref.shape}"
    return Distance(float(np.linalg.norm(ours - ref)), float(np.linalg.norm(caffe - ref)), float(np.linalg.norm(ref)))


def check(ours, caffe, ref, what: str) -> Distance:
    """Assert both referee conditions for one blob; returns the distances for reporting."""
    d = distance(ours, caffe, ref)
    assert d.caffe <= REFEREE_TOL * d.scale, (
        f"{what}: Caffe is {d.caffe / max(d.scale, 1e-300):.2e} (relative) from the float64 referee, beyond float32 "
        f"reach ({REFEREE_TOL:g}): our engine does not compute Caffe's function here")
    assert d.ours <= max(2 * d.caffe, FLOOR * d.scale), (
        f"{what}: ours is {d.ours / max(d.scale, 1e-300):.2e} from the float64 referee, Caffe "
        f"{d.caffe / max(d.scale, 1e-300):.2e}: less exact than twice Caffe's own rounding (floor {FLOOR:.1e})")
    return d


def _final_writer(layers: list[pb.LayerParameter]) -> dict[str, int]:
    """Blob name -> index of the last layer that writes it (an in-place chain leaves that layer's output)."""
    last: dict[str, int] = {}
    for i, lp in enumerate(layers):
        for top in lp.top:
            last[top] = i
    return last


def _pool_geometry(pp: pb.PoolingParameter) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    kh = pp.kernel_h or pp.kernel_size
    kw = pp.kernel_w or pp.kernel_size
    sh = pp.stride_h or (pp.stride if pp.HasField("stride") else 1)
    sw = pp.stride_w or (pp.stride if pp.HasField("stride") else 1)
    ph = pp.pad_h or pp.pad
    pw = pp.pad_w or pp.pad
    return (kh, kw), (sh, sw), (ph, pw)


class Decisions:
    """Every ReLU and MAX-pool decision of one forward pass, read from its blobs.

    A ReLU's decision is readable where its output is the blob's final value (nothing later writes the name): the
    positive elements. A MAX pool's decision is the element each window picks, recomputed here from its input blob
    where that is final, with one rule for all runs (an exact tie — all-zero windows after a ReLU — resolves the
    same way for all, and its gradient dies at the ReLU anyway).
    """

    def __init__(self, layers: list[pb.LayerParameter], blobs: Mapping[str, np.ndarray]) -> None:
        last = _final_writer(layers)
        self.made: dict[str, np.ndarray] = {}
        for i, lp in enumerate(layers):
            if lp.type == "ReLU" and last[lp.top[0]] == i:
                self.made[lp.name] = np.asarray(blobs[lp.top[0]]) > 0
            elif (lp.type == "Pooling" and lp.pooling_param.pool == pb.PoolingParameter.MAX
                  and not lp.pooling_param.global_pooling and last.get(lp.bottom[0], -1) < i):
                kernel, stride, pad = _pool_geometry(lp.pooling_param)
                x = torch.from_numpy(np.asarray(blobs[lp.bottom[0]], np.float64))
                _, index = F.max_pool2d(x, kernel, stride, pad, ceil_mode=True, return_indices=True)
                self.made[lp.name] = index.numpy()

    def count(self) -> int:
        return sum(int(v.size) for v in self.made.values())

    def differences(self, other: Decisions) -> dict[str, int]:
        """Layer -> how many of its decisions differ from `other`'s (only layers with a difference)."""
        assert self.made.keys() == other.made.keys()
        out = {}
        for name, mine in self.made.items():
            n = int(np.count_nonzero(mine != other.made[name]))
            if n:
                out[name] = n
        return out


def pin(net, decisions: Decisions) -> None:
    """Make a CaffeNet take `decisions` (another run's) at every ReLU and MAX pool, instead of its own.

    The layers keep their gradients (a pinned ReLU multiplies by the mask, a pinned pool gathers the chosen
    elements), so a float32 and a float64 run pinned to Caffe's decisions both follow Caffe's path, and what is
    left between them and Caffe is rounding alone.
    """
    for name, module in zip(net.layer_names, net.layers, strict=True):
        made = decisions.made.get(name)
        if made is None:
            continue
        if module.lp.type == "ReLU":
            mask = torch.from_numpy(np.asarray(made))
            module.forward = lambda bottoms, mask=mask: [bottoms[0] * mask.to(bottoms[0].dtype)]
        else:
            index = torch.from_numpy(np.asarray(made))
            module.forward = lambda bottoms, index=index: [
                bottoms[0].flatten(2).gather(2, index.flatten(2)).view(index.shape)]
