"""`squeezecaffe classify`: top-k labels for image files, with the training's preprocessing.

A file that cannot be read or decoded is reported on its own line and skipped; the others are still
classified (the command then exits non-zero). `--predictions` writes `<file name> <class id>` lines,
the submission format of Tiny ImageNet's unlabelled test set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from squeezecaffe.data_tools.image_files import images_under
from squeezecaffe.data_tools.layouts import ClassLabel
from squeezecaffe.errors import UserError
from squeezecaffe.evaluation.options import EVAL_DEFAULTS
from squeezecaffe.evaluation.preprocess import Preprocessor
from squeezecaffe.fileio import atomic_write_text
from squeezecaffe.scoring import softmax


@dataclass
class Prediction:
    path: Path
    top: list[tuple[ClassLabel, float]]  # best first


def expand_inputs(paths: list[str]) -> list[Path]:
    """Files as given (in order); a folder contributes its images, recursively, sorted."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += [p / rel for rel in images_under(p, p, {})]  # build-lmdb's walk: same files, same order
        else:
            out.append(p)
    return out


def classify_files(runtime, pre: Preprocessor, labels: list[ClassLabel], files: list[Path],
                   top: int = EVAL_DEFAULTS.top, batch_size: int = EVAL_DEFAULTS.batch_size
                   ) -> tuple[list[Prediction], list[tuple[Path, str]]]:
    predictions, failures = [], []
    for start in range(0, len(files), batch_size):
        ok_paths, arrays = [], []
        for path in files[start : start + batch_size]:
            try:
                arrays.append(pre.from_file(path))
                ok_paths.append(path)
            except UserError as exc:
                failures.append((path, str(exc)))
        if not arrays:
            continue
        probs = softmax(runtime.logits(np.stack(arrays)))
        k = min(top, probs.shape[1])
        for path, p in zip(ok_paths, probs, strict=True):
            order = np.argsort(-p, kind="stable")[:k]
            predictions.append(Prediction(path, [(labels[int(c)], float(p[c])) for c in order]))
    return predictions, failures


def format_prediction(pred: Prediction) -> str:
    cells = "  ".join(f"{i + 1}. {label.name}{f' ({label.id})' if label.id != label.name else ''} {100 * prob:.1f}%"
                      for i, (label, prob) in enumerate(pred.top))
    return f"{pred.path}: {cells}"


def write_predictions(path: str | Path, predictions: list[Prediction]) -> Path:
    return atomic_write_text(path, "".join(f"{p.path.name} {p.top[0][0].id}\n" for p in predictions))
