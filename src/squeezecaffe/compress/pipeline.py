"""`squeezecaffe compress`: prune -> retrain -> quantize -> fine-tune the shared values -> Huffman-code, a stage
per folder, with the top-1 of every stage on the data when there is data.

    OUT/pruned/     pruned.caffemodel (magnitude-pruned), masks.npz, retrain/ (a run directory), model.caffemodel
    OUT/quantized/  quantized.caffemodel (k-means shared values), clusters.npz, retrain/, model.caffemodel
    OUT/final/      model.sqz, model.caffemodel (decoded from model.sqz: dense, what Caffe and OpenCV load),
                    table.md, report.json

Retraining is a normal training run of the registry model on the data (torch engine), started from the stage's
weights with the stage's constraints held through every update (engines/torchcaffe/constraints.py), at
RETRAIN_LR_FACTOR of the source run's rate by default (compress/options.py), decayed by the model's `poly` policy
over --retrain-epochs. The .sqz file itself is read back by compress/sqz.py.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from squeezecaffe.caffe_rules.blobs import read_caffemodel
from squeezecaffe.compress.codec import decode_model, encode_model
from squeezecaffe.compress.container import Container
from squeezecaffe.compress.options import RETRAIN_MIN_ITERATIONS, CompressOptions
from squeezecaffe.compress.plan import PAPER_MIB, PAPER_TOTAL_KEPT, make_plan
from squeezecaffe.compress.retrain import recalibrate as recalibrate_stage
from squeezecaffe.compress.retrain import retrain as retrain_stage
from squeezecaffe.compress.retrain import retrain_context, retraining_epochs
from squeezecaffe.compress.sqz import same_weights
from squeezecaffe.compress.stages import STEPS, Held
from squeezecaffe.compress.table import Row, build_rows, fixed_width, format_rows, paper_comparison, rows_json
from squeezecaffe.engines.torchcaffe.constraints import save_constraints
from squeezecaffe.errors import UserError
from squeezecaffe.evaluation.artifacts import Artifacts, resolve_artifacts
from squeezecaffe.fileio import atomic_copy, atomic_write_bytes, atomic_write_text, ensure_writable_dir
from squeezecaffe.proto import pb, to_text, write_binary


@dataclass
class Stage:
    name: str
    weights: Path
    top1: float | None = None
    top5: float | None = None
    seconds: float = 0.0


@dataclass
class CompressResult:
    stages: list[Stage]
    rows: list[Row]
    sqz: Path
    caffemodel: Path
    table: Path
    report: Path
    notes: list[str] = field(default_factory=list)
    paper: str | None = None  # the kept-parameter comparison with the paper (--density paper)


def _evaluate(art: Artifacts, weights: Path, options: CompressOptions, out_dir: Path) -> tuple[float, float] | None:
    if art.data_dir is None and options.data is None:
        return None
    from squeezecaffe.evaluation.evaluate import evaluate_model, open_source
    from squeezecaffe.evaluation.preprocess import Preprocessor
    from squeezecaffe.evaluation.runtimes import make_runtime

    stage_art = replace(art, weights=weights)
    pre = Preprocessor(stage_art)
    source = open_source(stage_art, options.data, options.split, pre)
    result = evaluate_model(stage_art, make_runtime("torch", stage_art, options.device), source, pre, out_dir,
                            progress=options.progress)
    return result.scores.top1, result.scores.top5


def _check_out(out: Path, force: bool) -> None:
    stages = [out / s for s in ("dense", "pruned", "quantized", "final")]
    if any(s.exists() for s in stages):
        if not force:
            raise UserError(f"{out}: holds an earlier compression (pruned/, quantized/ or final/); give --force to "
                            "replace it, or another --out")
        for s in stages:
            shutil.rmtree(s, ignore_errors=True)
    ensure_writable_dir(out, "cannot write the compression's output folder")


def compress(source: str, out: str | Path, options: CompressOptions, *, model: str | None = None,
             net: str | None = None, say: Callable[[str], None] = print) -> CompressResult:
    """Run every stage; see the module docstring for what lands where."""
    from squeezecaffe.engines.torchcaffe.constraints import CENTROID_GRADIENTS

    if options.centroid_gradient not in CENTROID_GRADIENTS:
        raise UserError(f"--centroid-gradient {options.centroid_gradient}: choose {' or '.join(CENTROID_GRADIENTS)}")
    out = Path(out)
    art = resolve_artifacts(source, net=net, model=model, data=options.data, out_dir=out)
    dense = read_caffemodel(art.weights)
    plans, notes = make_plan(dense, options.density, options.bits, options.index_bits)
    notes = [*art.notes, *notes]
    _check_out(out, options.force)
    # retraining, or else (--retrain-epochs 0) BatchNorm's statistics re-estimated at the changed weights
    has_batchnorm = any(lp.type == "BatchNorm" for lp in dense.layer)
    retraining = options.retrain_epochs != 0
    wants_statistics = not retraining and options.bn_images > 0 and has_batchnorm
    ctx = retrain_context(art, model, options) if retraining or wants_statistics else None
    if ctx is None and (retraining or wants_statistics):
        what = "no retraining" if retraining else "BatchNorm statistics kept from the dense model"
        notes.append(f"{what}: it needs a registry model (--model or a run's) and a build-lmdb data directory "
                     "(--data or a run's)")
    retrain = ctx if retraining else None
    recalibrate = ctx if wants_statistics else None
    epochs = 0
    if retrain is not None:
        epochs, epoch = retraining_epochs(retrain, options)
        notes.append(f"each retraining stage: {epochs} epoch(s) of {epoch} iterations" +
                     ("" if options.retrain_epochs is not None else
                      f" (one epoch, raised to reach {RETRAIN_MIN_ITERATIONS} iterations; --retrain-epochs sets it)"))

    def recalibrated(folder: Path, model_now: pb.NetParameter) -> tuple[Path, pb.NetParameter]:
        fresh, images = recalibrate_stage(folder, model_now, recalibrate, options)
        say(f"BatchNorm statistics re-estimated over {images:,} training images (--bn-images)")
        return write_binary(folder / "recalibrated.caffemodel", fresh), fresh
    for note in notes:
        say(f"note: {note}")
    stages = []

    def stage(name: str, weights: Path, folder: Path) -> Stage:
        t0 = time.perf_counter()
        scores = _evaluate(art, weights, options, folder / "eval")
        s = Stage(name, weights, *(scores or (None, None)), time.perf_counter() - t0)
        stages.append(s)
        say(f"{name}: {weights}" + (f", top-1 {100 * s.top1:.2f}%, top-5 {100 * s.top5:.2f}%" if scores else ""))
        return s

    stage("dense", art.weights, out / "dense")

    # 1. prune, retrain with the masks held; 2. quantize the kept weights, fine-tune the shared values
    held, model_now = Held(), dense
    done = " + retrained" if retrain else " + BatchNorm re-estimated" if recalibrate else ""
    for step in STEPS:
        folder = out / step.name
        model_now, constraints = step.apply(model_now, plans, held)
        weights = write_binary(folder / f"{step.name}.caffemodel", model_now)
        constraints_path = save_constraints(folder / step.constraints_file, constraints)
        if retrain is not None or recalibrate is not None:
            stage(step.name, weights, folder)
        if retrain is not None:
            weights = retrain_stage(folder, weights, constraints_path, retrain, options, epochs)
            model_now = read_caffemodel(weights)
            step.reread(model_now, held, str(weights))
        elif recalibrate is not None:  # quantized: the shared values stay as k-means left them; only statistics move
            weights, model_now = recalibrated(folder, model_now)
        atomic_copy(weights, folder / "model.caffemodel")
        if step.scored_after:
            stage(f"{step.name}{done}", folder / "model.caffemodel", folder)
    quantized, coded = model_now, held.coded

    # 3. Huffman-code into the container; decode it again and prove it gives the same weights
    folder = out / "final"
    header = {"deploy": to_text(art.deploy), "transform": to_text(art.transform),
              "stored_size": list(art.stored_size) if art.stored_size else None,
              "labels": [[c.id, c.name] for c in art.labels], "source": str(art.weights),
              "data": str(art.data_dir.resolve()) if art.data_dir else None,
              "plan": {"density": options.density, "bits": options.bits, "index_bits": options.index_bits}}
    data, sizes = encode_model(quantized, coded, header)
    box = Container(data, str(folder / "model.sqz"))
    decoded = decode_model(box)
    same_weights(quantized, decoded, box.where)  # before the file exists: never a .sqz that decodes wrongly
    sqz = atomic_write_bytes(folder / "model.sqz", data)
    caffemodel = write_binary(folder / "model.caffemodel", decoded)
    final = stage("final (.sqz decoded)", caffemodel, folder)
    rows = build_rows(quantized, plans, {p.layer: int((coded[p.layer].clusters >= 0).sum()) for p in plans}, sizes,
                      len(data), fixed_width(box.header))
    lines, paper = _table_lines(sqz, rows, stages, options, len(data))
    table_path = atomic_write_text(folder / "table.md", "\n".join(lines) + "\n")
    dense_bytes = art.weights.stat().st_size
    report = {"source": str(art.weights), "source_bytes": dense_bytes, "sqz": str(sqz), "sqz_bytes": len(data),
              "ratio": dense_bytes / len(data), "options": dict(vars(options)),
              "stages": [{"name": s.name, "weights": str(s.weights), "top1": s.top1, "top5": s.top5}
                         for s in stages],
              "rows": rows_json(rows), "notes": notes}
    report_path = atomic_write_text(folder / "report.json", json.dumps(report, indent=1) + "\n")
    say("\n".join(lines[2:]))
    say(f"{art.weights.name} {dense_bytes:,} bytes -> {sqz} {len(data):,} bytes ({dense_bytes / len(data):.1f}x)"
        + (f"; top-1 {100 * stages[0].top1:.2f}% -> {100 * final.top1:.2f}%" if final.top1 is not None
           and stages[0].top1 is not None else ""))
    return CompressResult(stages, rows, sqz, caffemodel, table_path, report_path, notes, paper)


def _table_lines(sqz: Path, rows: list[Row], stages: list[Stage], options: CompressOptions,
                 file_size: int) -> tuple[list[str], str | None]:
    """table.md: the per-layer table, the comparison with the paper (--density paper), the top-1 of each stage."""
    lines, paper = [f"# {sqz}", "", format_rows(rows), ""], None
    if options.density == "paper":
        paper, ours, theirs = paper_comparison(rows)
        lines += ["Kept parameters beside the SqueezeNet paper's Table 1:", "", paper, ""]
        for bits, size in PAPER_MIB.items():
            if options.bits == str(bits):
                lines.append(f"stored size at {bits} bits: {file_size / 2**20:.3f} MiB with Huffman coding, "
                             f"{rows[-1].bytes_fixed / 2**20:.3f} MiB with fixed-width codes (the paper: {size} MiB)")
        if ours != PAPER_TOTAL_KEPT:
            lines.append(f"kept: {ours:,} (the paper: {theirs:,})")
    lines += ["", "| stage | top-1 | top-5 | weights |", "|---|---:|---:|---|"]
    for s in stages:
        top1 = f"{100 * s.top1:.2f}%" if s.top1 is not None else "-"
        top5 = f"{100 * s.top5:.2f}%" if s.top5 is not None else "-"
        lines.append(f"| {s.name} | {top1} | {top5} | {s.weights} |")
    return lines, paper
