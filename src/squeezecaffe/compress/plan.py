"""Which blobs are compressed, and how hard: density (fraction of weights kept) and bit widths per layer.

Specs, as the `compress` verb takes them:
- density: `paper` (the SqueezeNet paper's Table 1 for the SqueezeNet v1.0 layer names), `auto` (its pattern
  for any net: see AUTO_FIRST), a number for every weight blob (`0.33`), `PATTERN=D,...` (layer
  name patterns, first match wins, e.g. `conv1=1,*/expand3x3=0.3,*=0.5`), or a file of `PATTERN D` lines.
- bits: a number for every blob (`6`), or `conv=8,fc=5` (by layer kind) and/or name patterns, e.g. `6,conv10=5`.
- index bits (the bound on the relative position of the next non-zero): the same syntax; the paper's 8 for
  convolutions and 5 for fully connected layers by default.

Only weight blobs (blob 0 of Convolution, Deconvolution and InnerProduct layers) are pruned and quantized;
biases, BatchNorm statistics and Scale parameters are stored as float32 (the paper prunes and counts weights,
and keeps every bias: its per-layer counts are ceil(density x weights) + biases).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from squeezecaffe.errors import UserError
from squeezecaffe.proto import pb

WEIGHT_LAYERS = {"Convolution": "conv", "Deconvolution": "conv", "InnerProduct": "fc"}

# The SqueezeNet paper's Table 1 (SqueezeNet v1.0 with Deep Compression): density of s1x1 / e1x1 / e3x3 per
# Fire module, conv1 dense, conv10 at 20%.
_FIRES = {2: (1.0, 1.0, 0.33), 3: (1.0, 1.0, 0.33), 4: (1.0, 1.0, 0.33), 5: (1.0, 1.0, 0.33),
          6: (1.0, 0.5, 0.33), 7: (0.5, 1.0, 0.33), 8: (1.0, 0.5, 0.33), 9: (0.5, 1.0, 0.30)}
PAPER_DENSITY: list[tuple[str, float]] = [("conv1", 1.0), ("conv10", 0.2)] + [
    (f"fire{n}/{part}", d) for n, ds in _FIRES.items()
    for part, d in zip(("squeeze1x1", "expand1x1", "expand3x3"), ds, strict=True)]
# The paper's parameter counts after pruning (its Table 1), for the comparison the table prints.
PAPER_KEPT = {"conv1": 14208, "fire2": 5746, "fire3": 6258, "fire4": 20646, "fire5": 24742, "fire6": 44700,
              "fire7": 46236, "fire8": 77581, "fire9": 77581, "conv10": 103400}
PAPER_TOTAL_KEPT = 421098
PAPER_MIB = {6: 0.47, 8: 0.66}  # the paper's compressed SqueezeNet sizes (MiB: its 4.8 MB is 1,248,424 x 4 bytes)

# `auto`: the paper's table reduced to what carries over to any net: the first weight layer dense (few weights,
# and every later feature depends on it), the classifier (last weight layer) at 20%, every other weight layer at
# 33%, the density of the paper's expand3x3 layers, which hold most of SqueezeNet's Fire weights. (The paper
# keeps its small 1x1 layers at 50-100%; bypass nets have large 1x1 convolutions, where that costs: fullbypass8
# on Fashion-MNIST compressed 9.2x with 1x1 layers at 50%, 10.5x at 33%, both above the dense model's top-1 after
# retraining; docs/compression.md.)
AUTO_FIRST, AUTO_OTHER, AUTO_CLASSIFIER = 1.0, 0.33, 0.2


@dataclass(frozen=True)
class BlobPlan:
    layer: str
    kind: str  # conv or fc
    shape: tuple[int, ...]
    density: float
    bits: int
    index_bits: int

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    @property
    def kept(self) -> int:
        """Weights kept: ceil(density x weights), as the paper's counts round."""
        return min(self.count, math.ceil(round(self.density * self.count, 6)))


def weight_layers(model: pb.NetParameter) -> list[tuple[str, str, tuple[int, ...]]]:
    """(layer, kind, weight shape) of every layer with a weight blob, in net order."""
    from squeezecaffe.caffe_rules.blobs import blob_shape

    out = []
    for lp in model.layer:
        kind = WEIGHT_LAYERS.get(lp.type)
        if kind and len(lp.blobs):
            out.append((lp.name, kind, blob_shape(lp.blobs[0])))
    return out


def _number(text: str, what: str, low: float, high: float, integer: bool = False) -> float:
    try:
        value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        raise UserError(f"{what}: '{text}' is not a number") from None
    if not low <= value <= high or (integer and value != int(value)):
        raise UserError(f"{what}: {text} must be {'an integer ' if integer else ''}between {low:g} and {high:g}")
    return value


def _pairs(spec: str, what: str) -> list[tuple[str, str]]:
    pairs = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        pairs.append((key.strip(), value.strip()) if sep else ("*", key.strip()))
    if not pairs:
        raise UserError(f"{what}: empty")
    return pairs


def _lookup(rules: list[tuple[str, float]], name: str, kind: str) -> float | None:
    for pattern, value in rules:
        if pattern == kind or fnmatchcase(name, pattern):
            return value
    return None


def density_rules(spec: str, layers: list[tuple[str, str, tuple[int, ...]]]) -> list[tuple[str, float]]:
    """PATTERN -> density rules for `spec` (see the module docstring); `auto` is resolved per layer here."""
    what = f"--density {spec}"
    if spec == "paper":
        names = {name for name, _, _ in layers}
        if not any(pattern in names for pattern, _ in PAPER_DENSITY):
            raise UserError(f"{what}: the paper's table names SqueezeNet v1.0 layers (conv1, fire2/squeeze1x1, ..., "
                            "conv10) and this net has none of them; use auto, a number or a table")
        return PAPER_DENSITY
    if spec == "auto":
        last = len(layers) - 1
        return [(name, AUTO_FIRST if n == 0 else AUTO_CLASSIFIER if n == last else AUTO_OTHER)
                for n, (name, _, _) in enumerate(layers)]
    path = Path(spec)
    if "=" not in spec and path.is_file():
        lines = [ln.split("#")[0].split() for ln in path.read_text().splitlines()]
        rows = [ln for ln in lines if ln]
        bad = next((ln for ln in rows if len(ln) != 2), None)
        if bad is not None:
            raise UserError(f"{path}: expected 'PATTERN DENSITY' lines, got '{' '.join(bad)}'")
        return [(k, _number(v, f"{path}: {k}", 0.0, 1.0)) for k, v in rows]
    return [(k, _number(v, what, 0.0, 1.0)) for k, v in _pairs(spec, what)]


def width_rules(spec: str, what: str, low: int, high: int) -> list[tuple[str, float]]:
    return [(k, _number(v, f"{what} {spec}", low, high, integer=True)) for k, v in _pairs(spec, what)]


def make_plan(model: pb.NetParameter, density: str = "auto", bits: str = "6",
              index_bits: str = "conv=8,fc=5") -> tuple[list[BlobPlan], list[str]]:
    """One BlobPlan per weight blob, and notes on layers no rule named (kept dense / default widths)."""
    layers = weight_layers(model)
    if not layers:
        raise UserError("the caffemodel holds no Convolution or InnerProduct weights to compress")
    d_rules = density_rules(density, layers)
    b_rules = width_rules(bits, "--bits", 1, 8)
    i_rules = width_rules(index_bits, "--index-bits", 1, 12)
    plans, unmatched = [], []
    for name, kind, shape in layers:
        d = _lookup(d_rules, name, kind)
        if d is None:
            unmatched.append(name)
            d = 1.0
        b = _lookup(b_rules, name, kind)
        i = _lookup(i_rules, name, kind)
        if b is None or i is None:
            which = "--bits" if b is None else "--index-bits"
            raise UserError(f"{which}: no width for layer '{name}' ({kind}); add a default, e.g. '6,...'")
        plans.append(BlobPlan(name, kind, shape, float(d), int(b), int(i)))
    notes = [f"--density {density}: no rule for {', '.join(unmatched)}; kept dense"] if unmatched else []
    return plans, notes
