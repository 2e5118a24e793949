"""A grid over the Fire design space: one generated model per point and a table of what each point costs.

The SqueezeNet paper (Section 5) sweeps the squeeze ratio SR at pct3x3 = 0.5 (Figure 2a) and pct3x3 at SR = 0.5
(Figure 2b); `sweep` crosses whatever lists it is given. Each point is a variant name (netgen/variants.py), so a
point's folder trains with `train --solver POINT/solver.prototxt` or, by name, `train MODEL:sr=...`.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from squeezecaffe.fileio import atomic_write_text
from squeezecaffe.netgen.summary import summarize
from squeezecaffe.netgen.variants import FireDesign, file_stem, variant_name
from squeezecaffe.solvers.request import GenerationRequest, generate_run

# The model sizes the paper states for SqueezeNet v1.0's design space (Section 5.1: 4.8 MB at SR 0.125, 19 MB at
# SR 0.75, both at pct3x3 0.5); keyed by (SR, pct3x3) with the other metaparameters at their defaults.
PAPER_SIZES_MB = {(0.125, 0.5): 4.8, (0.75, 0.5): 19.0}
PAPER_MODEL = "squeezenet_v1_0"
# The grid's axes in table order: the paper's Figure 2a axis (SR) before Figure 2b's (pct3x3); FireDesign's fields.
AXES = ("base_e", "incr_e", "freq", "sr", "pct3x3")


@dataclass(frozen=True)
class SweepPoint:
    model: str  # the variant name
    folder: str
    design: dict[str, float]
    params: int  # every learned blob (the convention of the paper's SqueezeNet figure, 1,248,424)
    weights: int  # conv/fc kernels only
    megabytes: float  # params x 4 bytes / 10^6
    mebibytes: float  # params x 4 bytes / 2^20
    mflops: float  # 2 x multiply-adds of one forward pass, / 10^6
    paper_mb: float | None  # the size the paper states for this point, where it states one


def sweep(model: str, grid: dict[str, list[float]], out: Path, *, recipe: str = "default",
          data_dir: str | None = None) -> list[SweepPoint]:
    """Every combination of the lists in `grid` (FireDesign field -> values): generate, summarize, write."""
    keys = [k for k, values in grid.items() if values]
    points = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        design = dict(zip(keys, combo, strict=True))
        name = variant_name(model, design=design)
        folder = out / file_stem(name).partition("+")[2]
        run = generate_run(GenerationRequest(model=name, data=data_dir, recipe=recipe), folder)
        s = summarize(run.nets.deploy)
        nbytes = 4 * s.trainable
        points.append(SweepPoint(name, folder.name, design, s.trainable, s.weights, nbytes / 1e6, nbytes / 2**20,
                                 s.flops / 1e6, _paper_size(model, design)))
    write_table(points, out)
    return points


def _paper_size(model: str, design: dict[str, float]) -> float | None:
    v1_0 = FireDesign()  # the paper states sizes at v1.0's base_e, incr_e and freq only
    if model != PAPER_MODEL or any(design.get(k, getattr(v1_0, k)) != getattr(v1_0, k) for k in ("base_e", "incr_e", "freq")):
        return None
    return PAPER_SIZES_MB.get((design.get("sr", 0.125), design.get("pct3x3", 0.5)))


def format_table(points: list[SweepPoint]) -> str:
    keys = list(points[0].design) if points else []
    head = [*keys, "parameters", "MB", "MiB", "MFLOPs", "paper MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for p in points:
        cells = [f"{p.design[k]:g}" for k in keys] + [f"{p.params:,}", f"{p.megabytes:.2f}", f"{p.mebibytes:.2f}",
                                                      f"{p.mflops:,.0f}", f"{p.paper_mb:g}" if p.paper_mb else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(points: list[SweepPoint], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "table.md", format_table(points))
    atomic_write_text(out / "table.json", json.dumps([asdict(p) for p in points], indent=1) + "\n")
