"""`squeezecaffe eval`: a trained model over a whole labelled database or image folder.

Every record is scored once (no wrap-around batches), with the deploy net and the training's TEST
preprocessing, by the torch engine or OpenCV's dnn. Writes metrics.json (every figure, every wrong
prediction), confusion.png and errors.png (the most confident mistakes, as the seed study shows them).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from squeezecaffe.caffe_rules.decoding import forced_decoding
from squeezecaffe.data_tools.layouts import ClassLabel, discover
from squeezecaffe.data_tools.lmdb_io import LmdbReader
from squeezecaffe.errors import UnreadableImage, UserError
from squeezecaffe.evaluation.artifacts import Artifacts
from squeezecaffe.evaluation.figures import confusion_png, error_grid_png
from squeezecaffe.evaluation.options import EVAL_DEFAULTS
from squeezecaffe.evaluation.preprocess import Preprocessor
from squeezecaffe.fileio import atomic_write_text, ensure_writable_dir
from squeezecaffe.scoring import Scores, score


class LmdbSource:
    """Records of an LMDB (ours or Caffe's); labels are the Datum labels.

    Encoded records are decoded to the net's channels, as its Data layer does (force_color / force_gray, which nets
    for an encoded database carry); raw records are taken as stored, so a mismatch is refused, not converted."""

    def __init__(self, db: Path, name: str, channels: int) -> None:
        self.reader = LmdbReader(db)
        self.encoded_as = forced_decoding(channels)
        self.name = name
        self.where = str(db)
        if not len(self.reader):
            raise UserError(f"{db}: database is empty")

    def __len__(self) -> int:
        return len(self.reader)

    def item(self, i: int) -> tuple[np.ndarray, int]:
        datum = self.reader.datum(i)
        return self.reader.array(self.reader.keys[i], datum, self.encoded_as), int(datum.label)

    def key(self, i: int) -> str:
        return self.reader.keys[i].decode("utf-8", "replace")


class FolderSource:
    """Image files of a labelled layout (class folders, list file, Tiny ImageNet), mapped to the model's labels."""

    def __init__(self, items: list[tuple[str, int]], root: Path, name: str, pre: Preprocessor) -> None:
        self.items, self.root, self.name, self.pre = items, root, name, pre
        self.where = str(root)

    def __len__(self) -> int:
        return len(self.items)

    def item(self, i: int) -> tuple[np.ndarray, int]:
        rel, label = self.items[i]
        return self.pre.display_image(self.root / rel), label

    def key(self, i: int) -> str:
        return self.items[i][0]


def _pick_split(available: dict[str, bool], split: str | None, where: str) -> str:
    """`split` if given; else test when it is labelled, else val, else train."""
    if split:
        if split not in available:
            raise UserError(f"{where}: no '{split}' split (has: {', '.join(available) or 'none'})")
        if not available[split]:
            raise UserError(f"{where}: the {split} split has no labels; use 'squeezecaffe classify "
                            "--predictions' for unlabelled images")
        return split
    for name in ("test", "val", "train"):
        if available.get(name):
            return name
    raise UserError(f"{where}: no labelled split to evaluate")


def open_source(art: Artifacts, data: str | None, split: str | None, pre: Preprocessor):
    """A data directory (split), an LMDB, or an image folder; default: the run's data directory."""
    if data is None:
        if art.data_dir is None:
            raise UserError("give --data (a build-lmdb directory, an LMDB, or an image folder)")
        data = str(art.data_dir)
    path = Path(data)
    if not path.exists():
        raise UserError(f"{data}: no such database or folder")
    if (path / "data.mdb").is_file():
        return LmdbSource(path, split or path.name.removesuffix("_lmdb"), pre.channels)
    if (path / "manifest.json").is_file():
        from squeezecaffe.data_tools.manifest import read_manifest

        manifest = read_manifest(path)
        available = {s: bool(info.get("labelled", True)) for s, info in manifest.splits.items()}
        name = _pick_split(available, split, data)
        return LmdbSource(path / manifest.splits[name].get("db", f"{name}_lmdb"), name, pre.channels)
    dataset = discover(path, val_fraction=0)  # a folder to score: every image, none held out
    name = _pick_split(dataset.labelled, split, data)
    items = _map_labels(dataset.splits[name], dataset.class_ids, art.labels, data)
    return FolderSource(items, dataset.root, name, pre)


def _map_labels(items: list[tuple[str, int]], folder_ids: list[str], labels: list[ClassLabel],
                where: str) -> list[tuple[str, int]]:
    """Folder class ids -> the model's label indices (by class id; by position when the model has no names)."""
    by_id = {c.id: c.index for c in labels}
    if all(c.id == str(c.index) for c in labels):
        if len(folder_ids) > len(labels):
            raise UserError(f"{where}: {len(folder_ids)} class folders, the model outputs {len(labels)} classes")
        return items
    unknown = [cid for cid in folder_ids if cid not in by_id]
    if unknown:
        raise UserError(f"{where}: class '{unknown[0]}' is not one of the model's classes (labels.txt)")
    return [(rel, by_id[folder_ids[label]]) for rel, label in items]


@dataclass
class EvalOutput:
    scores: Scores
    split: str
    seconds: float
    metrics: dict
    files: list[Path]


@dataclass
class Scored:
    """The logits of every image that could be read, and which ones could not."""

    logits: np.ndarray
    labels: np.ndarray
    kept: np.ndarray  # source index of each row
    skipped: list[tuple[str, str]]  # (key, reason) of each unreadable image file


def run_batches(runtime, source, pre: Preprocessor, batch_size: int, progress: bool = True,
                max_skip: float = EVAL_DEFAULTS.max_skip) -> Scored:
    """Every record of `source` through the net once. An image file that cannot be decoded is skipped and
    listed (build-lmdb's rule, the same --max-skip share); a database record never is."""
    from tqdm import tqdm

    logits, labels, kept, skipped = [], [], [], []
    with tqdm(total=len(source), desc=f"eval {source.name}", unit="img", leave=False, disable=not progress) as bar:
        for start in range(0, len(source), batch_size):
            stop = min(start + batch_size, len(source))
            arrays = []
            for i in range(start, stop):
                try:
                    img, label = source.item(i)
                except UnreadableImage as exc:
                    skipped.append((source.key(i), str(exc)))
                    continue
                arrays.append(pre.from_stored(img, f"{source.where} [{source.key(i)}]"))
                labels.append(label)
                kept.append(i)
            if arrays:
                logits.append(runtime.logits(np.stack(arrays)))
            bar.update(stop - start)
    if len(skipped) > max_skip * len(source) or not kept:
        raise UserError(f"{source.where}: {len(skipped)} of {len(source)} images could not be read (more than "
                        f"--max-skip {max_skip:.0%}); first: {skipped[0][1]}")
    return Scored(np.concatenate(logits), np.asarray(labels, np.int64), np.asarray(kept, np.int64), skipped)


def evaluate_model(art: Artifacts, runtime, source, pre: Preprocessor, out_dir: Path,
                   batch_size: int = EVAL_DEFAULTS.batch_size, errors_shown: int = EVAL_DEFAULTS.errors,
                   progress: bool = True, max_skip: float = EVAL_DEFAULTS.max_skip) -> EvalOutput:
    ensure_writable_dir(out_dir)
    t0 = time.perf_counter()
    scored = run_batches(runtime, source, pre, batch_size, progress, max_skip)
    seconds = time.perf_counter() - t0
    logits, labels, kept = scored.logits, scored.labels, scored.kept
    if labels.max() >= art.classes:
        raise UserError(f"{source.where}: label {labels.max()} is outside the model's {art.classes} classes")
    s = score(logits, labels, art.labels)
    names = [c.name for c in art.labels]
    wrong = np.flatnonzero(s.predicted != labels)
    wrong = wrong[np.argsort(-s.confidence[wrong], kind="stable")]  # most confident mistakes first
    ranked = s.ranked_classes()
    metrics = {
        "weights": str(art.weights), "net": str(art.deploy_path), "data": source.where, "split": source.name,
        "engine": runtime.name, "count": s.count, "top1": s.top1, "top5": s.top5, "loss": s.loss,
        "seconds": seconds, "images_per_s": s.count / seconds if seconds else 0.0,
        "best_classes": [c["name"] for c in ranked[:5]], "worst_classes": [c["name"] for c in ranked[::-1][:5]],
        "per_class": s.per_class, "confusion": s.confusion.tolist(),
        "errors": [{"index": int(kept[i]), "key": source.key(int(kept[i])), "true": int(labels[i]),
                    "predicted": int(s.predicted[i]), "probability": float(s.confidence[i]),
                    "true_probability": float(s.true_probability[i])} for i in wrong],
        "skipped": [{"key": key, "reason": reason} for key, reason in scored.skipped],
    }
    title = f"{Path(art.weights).name} on {source.name} ({s.count} images): top-1 {100 * s.top1:.2f}%"
    files = [atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=1) + "\n"),
             confusion_png(s.confusion, names, out_dir / "confusion.png", title)]
    examples = [(source.item(int(kept[i]))[0], names[labels[i]], names[s.predicted[i]], float(s.confidence[i]))
                for i in wrong[:errors_shown]]
    files.append(error_grid_png(examples, out_dir / "errors.png", f"most confident mistakes: {title}"))
    return EvalOutput(s, source.name, seconds, metrics, files)


def format_eval(out: EvalOutput) -> str:
    s, m = out.scores, out.metrics
    ranked = s.ranked_classes()
    lines = [f"{out.split}: {s.count} images, top-1 {100 * s.top1:.2f}%, top-5 {100 * s.top5:.2f}%, loss {s.loss:.4f} "
             f"({m['engine']}, {m['images_per_s']:.0f} images/s)",
             "best classes:  " + ", ".join(f"{c['name']} {100 * c['top1']:.1f}%" for c in ranked[:5]),
             "worst classes: " + ", ".join(f"{c['name']} {100 * c['top1']:.1f}%" for c in ranked[::-1][:5])]
    if m["skipped"]:
        lines.append(f"skipped {len(m['skipped'])} unreadable image(s), listed in metrics.json; first: "
                     f"{m['skipped'][0]['reason']}")
    lines.append("wrote " + ", ".join(str(f) for f in out.files))
    return "\n".join(lines)


def prepare(weights: str | Path, *, net: str | None = None, model: str | None = None, data: str | None = None,
            mean_value: str | None = None, out_dir: Path | None = None, carried=None, engine: str = EVAL_DEFAULTS.engine,
            device: str = "cpu") -> tuple[Artifacts, Preprocessor, object]:
    """What WEIGHTS means (artifacts), how inputs are prepared, and the runtime that scores them."""
    from squeezecaffe.evaluation.artifacts import resolve_artifacts
    from squeezecaffe.evaluation.runtimes import make_runtime

    art = resolve_artifacts(str(weights), net=net, model=model, data=data, mean_value=mean_value, out_dir=out_dir,
                            carried=carried)
    return art, Preprocessor(art), make_runtime(engine, art, device)


def evaluate_weights(weights: str | Path, split: str | None = None, *, data: str | None = None,
                     out_dir: Path | None = None, batch_size: int = EVAL_DEFAULTS.batch_size,
                     errors_shown: int = EVAL_DEFAULTS.errors, progress: bool = False, prepared: tuple | None = None,
                     engine: str = EVAL_DEFAULTS.engine, device: str = "cpu",
                     max_skip: float = EVAL_DEFAULTS.max_skip) -> EvalOutput:
    """`squeezecaffe eval` as a call: a run directory (or weights with `prepared`) scored on a split of its data
    directory (or `data`); the figures go to RUN/eval/<split>[-engine] unless `out_dir` says otherwise."""
    if not 0 <= max_skip <= 1:
        raise UserError(f"--max-skip {max_skip:g}: give a share of the images between 0 and 1")
    art, pre, runtime = prepared or prepare(weights, data=data, engine=engine, device=device)
    source = open_source(art, data, split, pre)
    if out_dir is None:
        base = art.run_dir / "eval" if art.run_dir else Path(f"eval-{art.weights.stem}")
        # Another data set's split must not land where the run's own split of that name does.
        own = data is None or (art.data_dir is not None and Path(data).resolve() == Path(art.data_dir).resolve())
        name = source.name if own else f"{Path(data).resolve().name}-{source.name}"
        out_dir = base / (name if engine == "torch" else f"{name}-{engine}")
    return evaluate_model(art, runtime, source, pre, out_dir, batch_size, errors_shown, progress, max_skip)
