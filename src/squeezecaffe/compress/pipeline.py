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
from typing import TYPE_CHECKING

import numpy as np

from squeezecaffe.caffe_rules.blobs import blob_shape, blob_values, read_caffemodel
from squeezecaffe.compress.codec import CodedBlob, decode_model, encode_model
from squeezecaffe.compress.container import Container
from squeezecaffe.compress.kmeans import kmeans_1d
from squeezecaffe.compress.options import RETRAIN_LR_FACTOR, RETRAIN_MIN_ITERATIONS, CompressOptions
from squeezecaffe.compress.plan import PAPER_MIB, PAPER_TOTAL_KEPT, BlobPlan, make_plan
from squeezecaffe.compress.prune import magnitude_mask
from squeezecaffe.compress.sqz import same_weights
from squeezecaffe.compress.table import Row, build_rows, fixed_width, format_rows, paper_comparison, rows_json
from squeezecaffe.engines.torchcaffe.constraints import BlobConstraint, save_constraints
from squeezecaffe.errors import UserError
from squeezecaffe.evaluation.artifacts import Artifacts, resolve_artifacts
from squeezecaffe.fileio import atomic_copy, atomic_write_bytes, atomic_write_text, ensure_writable_dir
from squeezecaffe.proto import pb, read_text, set_float_data, to_text, write_binary

if TYPE_CHECKING:
    from squeezecaffe.train.config import TrainConfig



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


# ---------------------------------------------------------------- weights as arrays


def _weight(model: pb.NetParameter, layer: str) -> tuple[pb.BlobProto, np.ndarray]:
    lp = next(lp for lp in model.layer if lp.name == layer)
    blob = lp.blobs[0]
    return blob, blob_values(blob).astype(np.float32).reshape(blob_shape(blob))


def _set_weight(model: pb.NetParameter, layer: str, values: np.ndarray) -> None:
    blob, _ = _weight(model, layer)
    del blob.double_data[:]
    set_float_data(blob, np.asarray(values, np.float32).reshape(-1))


def prune(model: pb.NetParameter, plans: list[BlobPlan]) -> tuple[pb.NetParameter, list[BlobConstraint]]:
    """The model with each planned blob magnitude-pruned to its density, and the masks."""
    out = pb.NetParameter()
    out.CopyFrom(model)
    masks = []
    for plan in plans:
        _, w = _weight(out, plan.layer)
        mask = magnitude_mask(w, plan.kept)
        _set_weight(out, plan.layer, np.where(mask, w, np.float32(0)))
        masks.append(BlobConstraint(plan.layer, 0, mask=mask))
    return out, masks


def quantize(model: pb.NetParameter, plans: list[BlobPlan], masks: list[BlobConstraint]
             ) -> tuple[pb.NetParameter, dict[str, CodedBlob]]:
    """The model with each planned blob's kept weights replaced by their k-means (2^bits) shared values."""
    out = pb.NetParameter()
    out.CopyFrom(model)
    by_layer = {m.layer: m.kept() for m in masks}
    coded = {}
    for plan in plans:
        _, w = _weight(out, plan.layer)
        kept = by_layer[plan.layer]
        codebook, labels = kmeans_1d(w[kept], 1 << plan.bits)
        clusters = np.full(w.shape, -1, np.int32)
        clusters[kept] = labels
        coded[plan.layer] = CodedBlob(codebook, clusters, plan.bits, plan.index_bits)
        _set_weight(out, plan.layer, coded[plan.layer].values())
    return out, coded


def read_shared_values(model: pb.NetParameter, coded: dict[str, CodedBlob], where: str) -> dict[str, CodedBlob]:
    """Codebooks read back from fine-tuned weights: every member of a cluster must hold the same value (the
    constraint keeps them tied), and pruned weights must be zero."""
    out = {}
    for layer, blob in coded.items():
        _, w = _weight(model, layer)
        codebook = blob.codebook.copy()
        flat, clusters = w.reshape(-1), blob.clusters.reshape(-1)
        if np.any(flat[clusters < 0] != 0):
            raise UserError(f"{where}: layer '{layer}' has non-zero pruned weights; it is not the retrained model")
        members = clusters >= 0
        used, first = np.unique(clusters[members], return_index=True)  # one member of each cluster in use
        codebook[used] = flat[members][first]
        if np.any(flat[members] != codebook[clusters[members]]):
            raise UserError(f"{where}: layer '{layer}' has weights of one cluster that differ; its shared values "
                            "were not held during fine-tuning")
        out[layer] = replace(blob, codebook=codebook.astype(np.float32))
    return out


# ---------------------------------------------------------------- stages


@dataclass
class _Retrain:
    """What a retraining run needs: the source run's settings (or a fresh run's, with --model/--data) and its rate."""

    base: TrainConfig  # model, data and batch set; every other setting as the source run had it
    base_lr: float

    @property
    def model(self) -> str:
        return str(self.base.model)

    @property
    def data(self) -> str:
        return str(self.base.data)


def _retrain_context(art: Artifacts, model: str | None, options: CompressOptions) -> _Retrain | None:
    from squeezecaffe.train.config import TrainConfig, read_run_config

    source = read_run_config(art.run_dir)[0] if art.run_dir else None
    name = model or (source.model if source else None)
    data = options.data or (source.data if source else None)
    if not name or not data or art.data_dir is None:
        return None
    base = replace(source or TrainConfig(), model=name, data=str(art.data_dir),
                   batch_size=options.batch_size or (source.batch_size if source else None))
    if art.run_dir and (art.run_dir / "solver.prototxt").is_file() and source and source.model == name:
        base_lr = read_text(art.run_dir / "solver.prototxt", pb.SolverParameter).base_lr
    else:
        from squeezecaffe.netgen.variants import model_spec
        from squeezecaffe.solvers.recipes import resolve_recipe

        base_lr = resolve_recipe(model_spec(name), base.recipe, batch_size=base.batch_size,
                                 data_dir=str(art.data_dir)).sched.base_lr
    return _Retrain(base, base_lr)


def retraining_epochs(ctx: _Retrain, options: CompressOptions) -> tuple[int, int]:
    """(epochs, iterations per epoch) of each retraining stage: --retrain-epochs as given, else one epoch raised
    until the stage runs RETRAIN_MIN_ITERATIONS iterations."""
    import math

    from squeezecaffe.netgen.variants import model_spec
    from squeezecaffe.solvers.recipes import resolve_recipe
    from squeezecaffe.solvers.schedule import iterations_per_epoch

    resolved = resolve_recipe(model_spec(ctx.model), ctx.base.recipe, batch_size=ctx.base.batch_size,
                              data_dir=ctx.data)
    epoch = iterations_per_epoch(resolved.sched.train_size, resolved.cfg.batch_size, resolved.sched.iter_size)
    if options.retrain_epochs is not None:
        return options.retrain_epochs, epoch
    return max(1, math.ceil(RETRAIN_MIN_ITERATIONS / epoch)), epoch


def _stage_config(ctx: _Retrain, options: CompressOptions, **fields) -> TrainConfig:
    """The settings of a stage's run (retraining, or BatchNorm re-estimation): the source run's, with what a stage
    decides for itself replaced: the torch engine, this verb's device and seed, the generated solver at the stage's
    own length and rate (no hand-written solver, no solver fields of the source's), no initial weights, constraints
    or frozen layers of the source's; `fields` add the stage's own."""

    base = ctx.base
    stage = replace(base, solver=None, engine="torch", epochs=None, classes=None, solver_set={}, weights=None,
                    constraints=None, freeze=[], tensorboard=False, seed=options.seed,
                    device_options=replace(base.device_options, device=options.device),
                    # the stage runs the length the verb chose and printed: the plateau controller acts, the early
                    # stop does not
                    plateau=replace(base.plateau, early_stop=False))
    return replace(stage, **fields)


def _retrain(stage_dir: Path, weights: Path, constraints: Path, ctx: _Retrain, options: CompressOptions,
             epochs: int) -> Path:
    from squeezecaffe.train.launch import launch

    rate = options.retrain_lr if options.retrain_lr is not None else RETRAIN_LR_FACTOR * ctx.base_lr
    cfg = _stage_config(ctx, options, epochs=epochs, solver_set={"base_lr": f"{rate:.6g}"}, keep=1,
                        weights=str(weights.resolve()), constraints=str(constraints.resolve()),
                        centroid_gradient=options.centroid_gradient)
    run_dir = stage_dir / "retrain"
    if launch(cfg, run_dir, progress=options.progress, echo=options.progress) != 0:
        raise UserError(f"{run_dir}: the retraining was stopped by a signal; run compress again")
    best = run_dir / "best.caffemodel"
    if not best.is_file():
        raise UserError(f"{run_dir}: retraining finished no epoch (no best.caffemodel)")
    return best


def _recalibrate(stage_dir: Path, model: pb.NetParameter, ctx: _Retrain, options: CompressOptions
                 ) -> tuple[pb.NetParameter, int]:
    """`model` with its BatchNorm statistics re-estimated at its own weights over `options.bn_images` training
    images (the first records of the training database); returns it and the images used.

    Pruning and quantizing change what every convolution outputs, and statistics measured on the dense weights no
    longer fit them: pruned to a third without retraining, fullbypass8 scored 19.7% with the dense model's
    statistics (docs/compression.md). A retraining run re-estimates them itself; this is for `--retrain-epochs 0`.
    The nets are generated as for retraining, into STAGE/recalibrate/; only BatchNorm blobs change."""
    from squeezecaffe.engines.torchcaffe.batchnorm_stats import reestimated_model
    from squeezecaffe.engines.torchcaffe.options import EngineOptions
    from squeezecaffe.train.runner import generate_run_files

    folder = stage_dir / "recalibrate"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = _stage_config(ctx, options, epochs=1)
    solver_path, _ = generate_run_files(cfg, folder)
    net_path = Path(read_text(solver_path, pb.SolverParameter).net)
    engine_options = EngineOptions(device=options.device, channels_last=cfg.device_options.channels_last,
                                   workers=cfg.workers)
    return reestimated_model(net_path, model, options.bn_images, engine_options, options.seed)


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

    if options.retrain_epochs is not None and options.retrain_epochs < 0:
        raise UserError(f"--retrain-epochs {options.retrain_epochs}: must be 0 or more")
    if options.bn_images < 0:
        raise UserError(f"--bn-images {options.bn_images}: give a number of images >= 0 (0: keep the dense "
                        "model's statistics)")
    if options.retrain_lr is not None and not options.retrain_lr > 0:
        raise UserError(f"--retrain-lr {options.retrain_lr:g}: must be positive")
    if options.batch_size is not None and options.batch_size <= 0:
        raise UserError(f"--batch-size {options.batch_size}: must be positive")
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
    ctx = _retrain_context(art, model, options) if retraining or wants_statistics else None
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
        fresh, images = _recalibrate(folder, model_now, recalibrate, options)
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

    # 1. prune, retrain with the masks held
    folder = out / "pruned"
    pruned, masks = prune(dense, plans)
    write_binary(folder / "pruned.caffemodel", pruned)
    masks_path = save_constraints(folder / "masks.npz", masks)
    weights = folder / "pruned.caffemodel"
    if retrain is not None:
        stage("pruned", weights, folder)
        weights = _retrain(folder, weights, masks_path, retrain, options, epochs)
        pruned = read_caffemodel(weights)
    elif recalibrate is not None:
        stage("pruned", weights, folder)
        weights, pruned = recalibrated(folder, pruned)
    atomic_copy(weights, folder / "model.caffemodel")
    done = " + retrained" if retrain else " + BatchNorm re-estimated" if recalibrate else ""
    stage(f"pruned{done}", folder / "model.caffemodel", folder)

    # 2. quantize the kept weights, fine-tune the shared values
    folder = out / "quantized"
    quantized, coded = quantize(pruned, plans, masks)
    write_binary(folder / "quantized.caffemodel", quantized)
    clusters_path = save_constraints(folder / "clusters.npz", [BlobConstraint(layer, 0, clusters=c.clusters)
                                                               for layer, c in coded.items()])
    weights = folder / "quantized.caffemodel"
    if retrain is not None:
        stage("quantized", weights, folder)
        weights = _retrain(folder, weights, clusters_path, retrain, options, epochs)
        quantized = read_caffemodel(weights)
        coded = read_shared_values(quantized, coded, str(weights))
    elif recalibrate is not None:  # the shared values stay as k-means left them; only the statistics change
        stage("quantized", weights, folder)
        weights, quantized = recalibrated(folder, quantized)
    atomic_copy(weights, folder / "model.caffemodel")

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
