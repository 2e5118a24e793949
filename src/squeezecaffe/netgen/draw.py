"""A picture of a net's graph (PNG/SVG/PDF via matplotlib): one box per layer, in-place layers folded in.

Layers that work in place (BatchNorm, Scale, ReLU, Dropout) are listed inside the box of the layer
whose blob they modify, which keeps a 200-layer BatchNorm net readable.
"""

from __future__ import annotations

from pathlib import Path

from squeezecaffe.caffe_rules.shapes import infer_net
from squeezecaffe.fileio import atomic_savefig
from squeezecaffe.proto import pb

_COLORS = {"Convolution": "#cfe2f3", "Pooling": "#fce5cd", "Concat": "#d9ead3", "Eltwise": "#f4cccc",
           "InnerProduct": "#d9d2e9", "Input": "#eeeeee", "Data": "#eeeeee", "Softmax": "#fff2cc",
           "SoftmaxWithLoss": "#fff2cc", "Accuracy": "#fff2cc"}


_SHORT = {"Convolution": "Conv", "BatchNorm": "BN", "InnerProduct": "FC", "SoftmaxWithLoss": "SoftmaxLoss"}


def draw_net(net: pb.NetParameter, out_path: str | Path, phase: str = "TEST", data_shape=None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    infos = infer_net(net, phase, data_shape)
    nodes: list[dict] = []
    producer: dict[str, int] = {}
    for info in infos:
        layer = info.layer
        inplace = len(layer.top) == 1 and len(layer.bottom) == 1 and layer.top[0] == layer.bottom[0]
        if inplace and layer.bottom[0] in producer:
            node = nodes[producer[layer.bottom[0]]]
            node["extra"].append(layer.type)
            continue
        shape = info.top_shapes[0] if info.top_shapes else ()
        node = dict(name=layer.name, type=layer.type, extra=[], shape=shape,
                    parents=sorted({producer[b] for b in layer.bottom if b in producer}), level=0)
        node["level"] = 1 + max((nodes[p]["level"] for p in node["parents"]), default=-1)
        nodes.append(node)
        for top in layer.top:
            producer[top] = len(nodes) - 1
    levels: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        levels.setdefault(node["level"], []).append(i)
    n_levels = len(levels)
    max_width = max(len(v) for v in levels.values())
    box_w, box_h, gap_x, gap_y = 2.6, 0.62, 0.35, 0.38
    fig_w = max(4.0, max_width * (box_w + gap_x) + 0.5)
    fig_h = max(3.0, n_levels * (box_h + gap_y) + 0.5)
    fig, ax = plt.subplots(figsize=(fig_w, fig_h))
    ax.set_xlim(0, fig_w)
    ax.set_ylim(0, fig_h)
    ax.axis("off")
    pos = {}
    for level, members in levels.items():
        row_w = len(members) * box_w + (len(members) - 1) * gap_x
        x0 = (fig_w - row_w) / 2
        y = fig_h - 0.3 - level * (box_h + gap_y) - box_h
        for j, i in enumerate(members):
            pos[i] = (x0 + j * (box_w + gap_x), y)
    for i, node in enumerate(nodes):
        x, y = pos[i]
        for p in node["parents"]:
            px, py = pos[p]
            ax.annotate("", xy=(x + box_w / 2, y + box_h), xytext=(px + box_w / 2, py),
                        arrowprops=dict(arrowstyle="->", color="#666666", lw=0.8))
        ax.add_patch(FancyBboxPatch((x, y), box_w, box_h, boxstyle="round,pad=0.02",
                                    fc=_COLORS.get(node["type"], "#ffffff"), ec="#444444", lw=0.8))
        shape = node["shape"]
        size = f"{shape[2]}x{shape[3]}x{shape[1]}" if len(shape) == 4 else "x".join(map(str, shape[1:]))
        extra = "+".join(_SHORT.get(t, t) for t in node["extra"])
        kind = _SHORT.get(node["type"], node["type"])
        ax.text(x + box_w / 2, y + box_h * 0.68, node["name"], ha="center", va="center", fontsize=7, weight="bold")
        ax.text(x + box_w / 2, y + box_h * 0.28, f"{kind}{'+' + extra if extra else ''}  {size}",
                ha="center", va="center", fontsize=6)
    out_path = Path(out_path)
    atomic_savefig(fig, out_path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return out_path
