"""The Table-1-style summary: one row per module, parameters in both conventions, FLOPs, file size."""

from __future__ import annotations

from dataclasses import dataclass, field

from squeezecaffe.caffe_rules.shapes import LayerInfo, Shape, infer_net
from squeezecaffe.proto import pb


@dataclass
class ModuleRow:
    name: str
    types: list[str] = field(default_factory=list)
    output: Shape = ()
    squeeze: int | None = None
    expand1x1: int | None = None
    expand3x3: int | None = None
    weights: int = 0  # conv/fc kernels only
    weights_without_bypass: int = 0
    trainable: int = 0  # every learned blob (biases, Scale gamma/beta)
    macs: int = 0


@dataclass
class NetSummary:
    name: str
    rows: list[ModuleRow]
    input_shape: Shape
    caffemodel_bytes: int
    depth: int  # conv/fc layers on the main path (bypass and shortcut convs not counted)

    @property
    def weights(self) -> int:
        return sum(r.weights for r in self.rows)

    @property
    def weights_without_bypass(self) -> int:
        return sum(r.weights_without_bypass for r in self.rows)

    @property
    def trainable(self) -> int:
        return sum(r.trainable for r in self.rows)

    @property
    def flops(self) -> int:
        return 2 * sum(r.macs for r in self.rows)


_ROW_STARTERS = {"Convolution", "InnerProduct", "Pooling", "Concat", "Eltwise"}


def _is_bypass(name: str) -> bool:
    return "bypass" in name or "shortcut" in name


def group_modules(infos: list[LayerInfo]) -> list[ModuleRow]:
    """Group layers by the first component of their name (fire2/..., conv1/bn -> conv1).

    A layer without parameters that would start a group of its own (an in-place ReLU named
    'relu_conv1' in someone else's prototxt) is folded into the row before it.
    """
    rows: list[ModuleRow] = []
    for info in infos:
        if info.type in ("Input", "Data", "SoftmaxWithLoss", "Accuracy", "Softmax", "Split"):
            continue
        key = info.name.split("/")[0]
        if not rows or (rows[-1].name != key and (info.type in _ROW_STARTERS or info.params)):
            rows.append(ModuleRow(key))
        row = rows[-1]
        row.types.append(info.type)
        row.output = info.top_shapes[0] if info.top_shapes else row.output
        leaf = info.name.split("/")[-1]
        if info.type == "Convolution":
            num = info.layer.convolution_param.num_output
            if leaf.startswith("squeeze"):
                row.squeeze = num
            elif leaf == "expand1x1":
                row.expand1x1 = num
            elif leaf == "expand3x3":
                row.expand3x3 = num
        for p in info.params:
            if p.kernel:
                row.weights += p.count
                if not _is_bypass(info.name):
                    row.weights_without_bypass += p.count
            if p.trainable:
                row.trainable += p.count
        row.macs += info.macs
    return rows


def expected_caffemodel_bytes(net: pb.NetParameter, infos: list[LayerInfo]) -> int:
    """Size of this net serialized with float32 blobs of every parameter, as Caffe would write it."""
    model = pb.NetParameter()
    model.CopyFrom(net)
    by_name = {i.name: i for i in infos}
    for layer in model.layer:
        info = by_name.get(layer.name)
        if info is None:
            continue
        for p in info.params:
            blob = layer.blobs.add()
            blob.shape.dim.extend(p.shape)
            blob.data.extend([0.0] * p.count)
    return model.ByteSize()


def summarize(net: pb.NetParameter, data_shape: Shape | None = None, where: str = "net") -> NetSummary:
    infos = infer_net(net, "TEST", data_shape, where)
    per_image = infos[0].top_shapes[0][0] if infos and infos[0].top_shapes and infos[0].top_shapes[0] else 1
    rows = group_modules(infos)
    for row in rows:
        row.macs //= max(per_image, 1)
    depth = 0
    for info in infos:
        if info.type in ("Convolution", "InnerProduct") and not _is_bypass(info.name):
            # A Fire's two expand branches run side by side: they count as one layer of depth.
            if info.name.endswith("expand3x3"):
                continue
            depth += 1
    input_shape = infos[0].top_shapes[0] if infos else ()
    return NetSummary(net.name, rows, input_shape, expected_caffemodel_bytes(net, infos), depth)


def _fmt(v: int | None) -> str:
    return "" if v is None else f"{v:,}"


def format_summary(s: NetSummary) -> str:
    header = ["layer", "output HxWxC", "s1x1", "e1x1", "e3x3", "weights", "w/o bypass", "trainable", "MFLOPs"]
    lines = []
    for r in s.rows:
        out = r.output
        size = f"{out[2]}x{out[3]}x{out[1]}" if len(out) == 4 else "x".join(map(str, out[1:]))
        lines.append([r.name, size, _fmt(r.squeeze), _fmt(r.expand1x1), _fmt(r.expand3x3), _fmt(r.weights),
                      _fmt(r.weights_without_bypass), _fmt(r.trainable), f"{2 * r.macs / 1e6:.1f}"])
    total = ["total", "", "", "", "", _fmt(s.weights), _fmt(s.weights_without_bypass), _fmt(s.trainable),
             f"{s.flops / 1e6:.1f}"]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines, total, strict=True)]

    def fmt_row(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    rule = "  ".join("-" * w for w in widths)
    inp = "x".join(map(str, s.input_shape))
    out = [f"{s.name}  (input {inp})", fmt_row(header), rule, *map(fmt_row, lines), rule, fmt_row(total), "",
           f"weights (conv/fc kernels only):   {s.weights:,}  ({s.weights_without_bypass:,} without bypass)",
           f"trainable parameters (all):       {s.trainable:,}",
           f"depth (conv/fc on main path):     {s.depth}",
           f"FLOPs per image:                  {s.flops:,}  ({s.flops / 1e9:.3f} GFLOPs, 2 x multiply-adds)",
           f"expected .caffemodel size:        {s.caffemodel_bytes:,} bytes ({s.caffemodel_bytes / 1e6:.2f} MB)"]
    return "\n".join(out)
