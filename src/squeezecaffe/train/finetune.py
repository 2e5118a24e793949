"""Pretrained weights into a net of another shape: the layers of a caffemodel that fit the net by name, count and
shape are kept, the rest start from their fillers and the run says which and why.

Caffe's `copy_from` stops at a layer whose blob shapes differ (a 1000-class conv10 into a 10-class net); renaming
the layer is the usual workaround. `fit_weights` writes the caffemodel the engines then load
(`RUN/init.caffemodel`), so `caffe train --weights RUN/init.caffemodel` starts from the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from squeezecaffe.errors import UserError
from squeezecaffe.proto import pb

Shape = tuple[int, ...]


@dataclass
class FitReport:
    copied: list[str] = field(default_factory=list)
    reinitialized: list[tuple[str, Shape, Shape]] = field(default_factory=list)  # (layer, file shape, net shape)
    not_in_file: list[str] = field(default_factory=list)  # net layers with weights the file lacks: their fillers
    unused: list[str] = field(default_factory=list)  # file layers the net does not have

    def describe(self, source: str) -> str:
        lines = [f"fine-tuning from {source}: {len(self.copied)} layers copied by name"]
        for name, have, want in self.reinitialized:
            lines.append(f"  re-initialized from its filler (shape changed): {name} "
                         f"{'x'.join(map(str, have))} in the file, {'x'.join(map(str, want))} in the net")
        if self.not_in_file:
            lines.append(f"  from their fillers (not in the file): {', '.join(self.not_in_file)}")
        if self.unused:
            lines.append(f"  in the file but not in the net (unused): {', '.join(self.unused)}")
        return "\n".join(lines)


def _file_shape(blob: pb.BlobProto) -> Shape:
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    legacy = (blob.num, blob.channels, blob.height, blob.width)
    return tuple(d for d in legacy if d) or (0,)


def _same(have: Shape, want: Shape) -> bool:
    """Equal, or equal once size-1 axes are set aside (a legacy 4-axis InnerProduct blob N x C x 1 x 1)."""
    return have == want or [d for d in have if d != 1] == [d for d in want if d != 1]


def fit_weights(model: pb.NetParameter, net_shapes: dict[str, list[Shape]],
                source: str = "weights file") -> tuple[pb.NetParameter, FitReport]:
    """The layers of `model` whose blobs fit the net (by name, count and shape), and what happened to the rest."""
    report = FitReport()
    out = pb.NetParameter(name=model.name)
    in_file = {lp.name: lp for lp in model.layer if len(lp.blobs)}
    for name, shapes in net_shapes.items():
        lp = in_file.get(name)
        if lp is None:
            report.not_in_file.append(name)
            continue
        have = [_file_shape(b) for b in lp.blobs]
        if len(have) != len(shapes) or not all(_same(h, w) for h, w in zip(have, shapes, strict=False)):
            report.reinitialized.append((name, have[0] if have else (), shapes[0] if shapes else ()))
            continue
        out.layer.add().CopyFrom(lp)
        report.copied.append(name)
    report.unused = [n for n in in_file if n not in net_shapes]
    if not report.copied:
        raise UserError(f"{source}: no layer fits the net by name and shape (is it another model's weights?)")
    return out, report
