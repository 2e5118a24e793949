"""The per-layer size table in the shape of the SqueezeNet paper's Table 1, from a plan and the encoded sizes."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from squeezecaffe.compress.plan import PAPER_KEPT, BlobPlan
from squeezecaffe.proto import pb


@dataclass
class Row:
    layer: str
    parameters: int  # every value of the layer's blobs (weights and biases), as the paper counts them
    density: float | None  # weights kept / weights (None: a float32-only row)
    nonzeros: int  # weights kept + every other value of the layer (biases are never pruned)
    bits: int | None  # cluster-index bits of the weights (32 = stored as float32)
    index_bits: int | None  # bound of the relative positions (None: nothing pruned, no positions stored)
    bytes_before: int  # float32, dense
    bytes_after: int  # the layer's sections in the .sqz
    bytes_fixed: int = 0  # the same content with fixed-width codes instead of Huffman codes (see fixed_width)

    @property
    def ratio(self) -> float:
        return self.bytes_before / self.bytes_after if self.bytes_after else float("inf")


def fixed_width(header: dict) -> dict[str, int]:
    """Bytes per layer before Huffman coding, from a container's header: the codebook (float32), `bits` per entry
    (fillers included: the paper's filler zeros take a weight code too), `index_bits` per entry when pruned, and
    float32 for every other blob. What Deep Compression stores after quantization, before its last stage."""
    out = {}
    for layer in header.get("layers", []):
        total = 0
        for blob in layer["blobs"]:
            if blob["encoding"] == "coded":
                per_entry = blob["bits"] + (blob["index_bits"] if blob["layout"] == "sparse" else 0)
                total += 4 * blob["clusters"] + math.ceil(blob["entries"] * per_entry / 8)
            else:
                total += 4 * math.prod(blob["shape"])
        out[layer["name"]] = total
    return out


def build_rows(model: pb.NetParameter, plans: list[BlobPlan], kept: dict[str, int], sizes: dict[str, int],
               file_size: int, fixed: dict[str, int] | None = None) -> list[Row]:
    """One row per weight layer, one for every other layer with blobs (float32), one for the container's header
    and a total (whose bytes_after is the file's size)."""
    from squeezecaffe.caffe_rules.blobs import blob_shape

    by_name = {p.layer: p for p in plans}
    rows, others = [], Row("other layers (float32)", 0, None, 0, 32, None, 0, 0)
    count = 0
    for lp in model.layer:
        if not len(lp.blobs):
            continue
        values = sum(math.prod(blob_shape(b)) for b in lp.blobs)
        plan = by_name.get(lp.name)
        fixed_bytes = (fixed or {}).get(lp.name, 0)
        if plan is None:
            others.parameters += values
            others.nonzeros += values
            others.bytes_before += 4 * values
            others.bytes_after += sizes.get(lp.name, 0)
            others.bytes_fixed += fixed_bytes
            count += 1
            continue
        dense = kept[lp.name] == plan.count
        rows.append(Row(lp.name, values, kept[lp.name] / plan.count, values - plan.count + kept[lp.name], plan.bits,
                        None if dense else plan.index_bits, 4 * values, sizes.get(lp.name, 0), fixed_bytes))
    if count:
        others.layer = f"other layers ({count}, float32)"
        rows.append(others)
    payload = sum(sizes.values())
    rows.append(Row("header", 0, None, 0, None, None, 0, file_size - payload))
    total = Row("total", sum(r.parameters for r in rows), None, sum(r.nonzeros for r in rows), None, None,
                sum(r.bytes_before for r in rows), file_size, sum(r.bytes_fixed for r in rows))
    weights = sum(p.count for p in plans)
    total.density = sum(kept.values()) / weights if weights else None
    return [*rows, total]


def format_rows(rows: list[Row]) -> str:
    head = ("| layer | parameters | density | non-zeros | bits | index bits | bytes before | fixed-width bytes | "
            "bytes after | ratio |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        density = f"{100 * r.density:.1f}%" if r.density is not None else ""
        bits = "" if r.bits is None else str(r.bits)
        index = "" if r.index_bits is None else str(r.index_bits)
        ratio = f"{r.ratio:.1f}x" if r.bytes_before else ""
        params = f"{r.parameters:,}" if r.parameters else ""
        nz = f"{r.nonzeros:,}" if r.parameters else ""
        before = f"{r.bytes_before:,}" if r.bytes_before else ""
        name = f"**{r.layer}**" if r.layer == "total" else r.layer
        fixed = f"{r.bytes_fixed:,}" if r.bytes_fixed else ""
        lines.append(f"| {name} | {params} | {density} | {nz} | {bits} | {index} | {before} | {fixed} | "
                     f"{r.bytes_after:,} | {ratio} |")
    return "\n".join(lines)


def paper_comparison(rows: list[Row]) -> tuple[str, int, int]:
    """Kept parameters per module (conv1, fire2..fire9, conv10) beside the paper's Table 1; (table, ours, paper)."""
    ours: dict[str, int] = {}
    for r in rows:
        module = r.layer.split("/")[0]
        if module in PAPER_KEPT and r.density is not None:
            ours[module] = ours.get(module, 0) + r.nonzeros
    lines = ["| module | kept (ours) | kept (paper) | difference |", "|---|---:|---:|---:|"]
    for module, paper in PAPER_KEPT.items():
        mine = ours.get(module, 0)
        lines.append(f"| {module} | {mine:,} | {paper:,} | {mine - paper:+,} |")
    total_ours, total_paper = sum(ours.get(m, 0) for m in PAPER_KEPT), sum(PAPER_KEPT.values())
    lines.append(f"| **total** | {total_ours:,} | {total_paper:,} | {total_ours - total_paper:+,} |")
    return "\n".join(lines), total_ours, total_paper


def rows_json(rows: list[Row]) -> list[dict]:
    return [{**asdict(r), "ratio": r.ratio if r.bytes_after else None} for r in rows]
