"""Weights held to a pattern while the solver trains them: pruning masks and shared (quantized) values.

Deep Compression (Han et al., ICLR 2016) retrains a pruned net with its pruned weights held at exactly zero,
then fine-tunes a quantized net whose weights are tied to one shared value per cluster. Both are constraints
on the update of chosen blobs, applied inside the solver's update (`Solver.apply_update`):

- a **mask** zeroes the gradient of pruned weights after weight decay is added, and multiplies the weights by
  the mask after the update, so neither weight decay nor momentum history can revive a pruned weight;
- **clusters** give every weight of a cluster the same gradient: the sum of its members' gradients (the
  paper's rule: the shared value's gradient is the sum over the weights that use it) or, by default, that
  sum divided by the member count. Members start equal (bind() sets each to its cluster's mean), receive the
  same gradient and the same history, so they stay bit-identical through any update rule; the shared value
  moves as one parameter would. Entries with cluster -1 are pruned (held at zero).

The file format (a .npz written by `save_constraints`) is owned here, below both the compress package that
writes it and the training run that reads it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from squeezecaffe.errors import UserError

CENTROID_GRADIENTS = ("mean", "sum")


@dataclass
class BlobConstraint:
    layer: str
    blob: int
    mask: np.ndarray | None = None  # bool, the blob's shape: True = kept
    clusters: np.ndarray | None = None  # int, the blob's shape: cluster index, -1 = pruned

    def kept(self) -> np.ndarray:
        if self.clusters is not None:
            return self.clusters >= 0
        assert self.mask is not None
        return self.mask


@dataclass
class _Bound:
    pruned: Tensor  # bool, the blob's shape: True where the weight is held at +0.0
    index: Tensor | None  # flat cluster index, pruned entries in the extra bucket K
    divisor: Tensor | None  # per-cluster divisor of the summed gradient (member count, or 1 for "sum")
    clusters: int


class Constraints:
    """A set of blob constraints, bound to a solver's learnable blobs by (layer name, blob index)."""

    def __init__(self, items: list[BlobConstraint], centroid_gradient: str = "mean", where: str = "constraints"):
        if centroid_gradient not in CENTROID_GRADIENTS:
            raise UserError(f"{where}: centroid gradient '{centroid_gradient}' (use mean or sum)")
        self.items = items
        self.centroid_gradient = centroid_gradient
        self.where = where
        self.bound: dict[int, _Bound] = {}

    def bind(self, params: list[tuple]) -> None:
        """Attach to the solver's (layer, index, blob, lr_mult, decay_mult) list; project the current weights
        onto the constraints (pruned entries to zero, each cluster to its members' mean)."""
        by_key = {(layer, index): i for i, (layer, index, *_rest) in enumerate(params)}
        self.bound = {}
        for item in self.items:
            i = by_key.get((item.layer, item.blob))
            if i is None:
                raise UserError(f"{self.where}: the net has no learnable blob {item.blob} in layer '{item.layer}'")
            blob = params[i][2]
            shape = tuple(item.kept().shape)
            if shape != tuple(blob.shape):
                raise UserError(f"{self.where}: layer '{item.layer}' blob {item.blob} has shape "
                                f"{'x'.join(map(str, blob.shape))}, the constraint {'x'.join(map(str, shape))}")
            pruned = torch.from_numpy(~item.kept()).to(blob.device)
            index = divisor = None
            k = 0
            if item.clusters is not None:
                k = int(item.clusters.max()) + 1 if item.clusters.size else 0
                flat = np.where(item.clusters >= 0, item.clusters, k).reshape(-1).astype(np.int64)
                index = torch.from_numpy(flat).to(blob.device)
                counts = np.bincount(flat, minlength=k + 1).astype(np.float64)
                div = np.maximum(counts, 1.0) if self.centroid_gradient == "mean" else np.ones_like(counts)
                divisor = torch.from_numpy(div).to(blob.device, torch.float64)
            self.bound[i] = _Bound(pruned, index, divisor, k)
            with torch.no_grad():
                self._project(i, blob)

    def _segment(self, b: _Bound, values: Tensor) -> Tensor:
        """Per-cluster sums of `values` (float64), the pruned bucket last."""
        assert b.index is not None
        sums = torch.zeros(b.clusters + 1, dtype=torch.float64, device=values.device)
        return sums.index_add_(0, b.index, values.reshape(-1).to(torch.float64))

    def _project(self, i: int, blob: Tensor) -> None:
        b = self.bound[i]
        if b.index is not None:
            ones = torch.ones(blob.numel(), dtype=torch.float64, device=blob.device)
            means = self._segment(b, blob) / self._segment(b, ones).clamp(min=1.0)
            blob.copy_(means[b.index].reshape(blob.shape).to(blob.dtype))
        blob.masked_fill_(b.pruned, 0.0)

    def on_diff(self, i: int, diff: Tensor) -> None:
        """The regularised gradient of learnable blob `i`, before the update rule sees it."""
        b = self.bound.get(i)
        if b is None:
            return
        if b.index is not None:
            assert b.divisor is not None
            shared = self._segment(b, diff) / b.divisor
            diff.copy_(shared[b.index].reshape(diff.shape).to(diff.dtype))
        diff.masked_fill_(b.pruned, 0.0)

    def after_update(self, i: int, blob: Tensor) -> None:
        b = self.bound.get(i)
        if b is not None:  # a fill, not a product: a negative weight times 0 would be -0.0
            blob.masked_fill_(b.pruned, 0.0)


def save_constraints(path: str | os.PathLike, items: list[BlobConstraint]) -> Path:
    """One .npz: an index (JSON) of (layer, blob, kind) and one array per constraint; written atomically."""
    import io

    from squeezecaffe.fileio import atomic_write_bytes

    arrays: dict[str, np.ndarray] = {}
    index = []
    for n, item in enumerate(items):
        if item.clusters is not None:
            arrays[f"a{n}"] = item.clusters.astype(np.int16 if item.clusters.max(initial=0) < 2**15 else np.int32)
            kind = "clusters"
        else:
            assert item.mask is not None
            arrays[f"a{n}"] = np.packbits(item.mask.reshape(-1))
            kind = "mask"
        index.append({"layer": item.layer, "blob": item.blob, "kind": kind, "shape": list(item.kept().shape)})
    arrays["index"] = np.frombuffer(json.dumps(index).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def load_constraints(path: str | os.PathLike) -> list[BlobConstraint]:
    try:
        with np.load(path) as data:
            index = json.loads(bytes(data["index"]).decode())
            items = []
            for n, entry in enumerate(index):
                shape = tuple(entry["shape"])
                raw = data[f"a{n}"]
                if entry["kind"] == "clusters":
                    items.append(BlobConstraint(entry["layer"], entry["blob"], clusters=raw.astype(np.int32).reshape(shape)))
                else:
                    count = int(np.prod(shape))
                    mask = np.unpackbits(raw)[:count].astype(bool).reshape(shape)
                    items.append(BlobConstraint(entry["layer"], entry["blob"], mask=mask))
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable constraints file ({exc})") from None
    return items
