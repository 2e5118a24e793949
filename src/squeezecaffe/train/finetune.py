"""Pretrained weights into a net of another shape: the layers of a caffemodel that fit the net by name, count and
shape are kept, the rest start from their fillers and the run says which and why.

Caffe's `copy_from` stops at a layer whose blob shapes differ (a 1000-class conv10 into a 10-class net); renaming
the layer is the usual workaround. `fit_weights` writes the caffemodel the engines then load
(`RUN/init.caffemodel`), so `caffe train --weights RUN/init.caffemodel` starts from the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from squeezecaffe.caffe_rules.blobs import blob_shape, shapes_match
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


def fit_weights(model: pb.NetParameter, net_shapes: dict[str, list[Shape]],
                source: str = "weights file") -> tuple[pb.NetParameter, FitReport]:
    """The layers of `model` whose blobs fit the net (by name, count and shape), and what happened to the rest.

    A blob fits by Caffe's own rule (`shapes_match`: equal, or a legacy num/channels/height/width blob equal to the
    shape padded with leading 1s), the one the engines apply when they load `RUN/init.caffemodel`: a looser rule here
    would pass a layer that the load then refuses."""
    report = FitReport()
    out = pb.NetParameter(name=model.name)
    in_file = {lp.name: lp for lp in model.layer if len(lp.blobs)}
    for name, shapes in net_shapes.items():
        lp = in_file.get(name)
        if lp is None:
            report.not_in_file.append(name)
            continue
        if len(lp.blobs) != len(shapes) or not all(shapes_match(b, w) for b, w in zip(lp.blobs, shapes, strict=False)):
            report.reinitialized.append((name, blob_shape(lp.blobs[0]), shapes[0] if shapes else ()))
            continue
        out.layer.add().CopyFrom(lp)
        report.copied.append(name)
    report.unused = [n for n in in_file if n not in net_shapes]
    if not report.copied:
        raise UserError(f"{source}: no layer fits the net by name and shape (is it another model's weights?)")
    return out, report
