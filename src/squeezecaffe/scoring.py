"""Scoring: classification figures from logits and labels, one rule for every engine and runtime.

Top-k follows Caffe's Accuracy layer: a sample counts when fewer than k classes score strictly higher than the
true one (ties go to the true class). The confusion matrix uses the arg-max prediction. Whole-database
validation (`evaluate_batches`) takes every record once: Caffe's own test pass runs test_iter batches, so when
the database size is not a multiple of the batch its last batch wraps around and counts a few records twice;
here the records past the end are dropped.

At the bottom of the layers (numpy and the schema only), so the engines, training and evaluation all score
through it without importing each other.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from squeezecaffe.errors import UserError
from squeezecaffe.proto import pb


class ClassName(NamedTuple):
    index: int
    id: str
    name: str


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class Scores:
    count: int
    loss: float
    top1: float
    top5: float
    per_class: list[dict]  # index, id, name, count, top1
    confusion: np.ndarray  # [true, predicted] counts
    predicted: np.ndarray  # arg-max class per sample
    confidence: np.ndarray  # its probability
    true_probability: np.ndarray

    def ranked_classes(self) -> list[dict]:
        """Classes with samples, best top-1 first (ties by name, for a stable report)."""
        present = [c for c in self.per_class if c["count"]]
        return sorted(present, key=lambda c: (-c["top1"], c["name"]))


def score(logits: np.ndarray, labels: np.ndarray, classes: Sequence) -> Scores:
    """`classes`: objects with index, id and name (data_tools' ClassLabel, or ClassName)."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    n, k = logits.shape
    if n == 0:
        raise ValueError("no samples to score")
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(f"labels must lie in 0..{k - 1}")
    probs = softmax(logits)
    true_scores = logits[np.arange(n), labels]
    higher = (logits > true_scores[:, None]).sum(axis=1)
    hit1 = higher < 1
    hit5 = higher < min(5, k)
    predicted = logits.argmax(axis=1)
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    true_prob = probs[np.arange(n), labels]
    loss = float(-np.log(np.maximum(true_prob, np.finfo(np.float64).tiny)).mean())
    per_class = []
    for c in classes:
        mask = labels == c.index
        count = int(mask.sum())
        per_class.append({"index": c.index, "id": c.id, "name": c.name, "count": count,
                          "top1": float(hit1[mask].mean()) if count else 0.0})
    return Scores(count=n, loss=loss, top1=float(hit1.mean()), top5=float(hit5.mean()), per_class=per_class,
                  confusion=confusion, predicted=predicted, confidence=probs[np.arange(n), predicted],
                  true_probability=true_prob)


@dataclass
class EvalResult:
    loss: float
    top1: float
    top5: float
    count: int
    seconds: float = 0.0
    majority: float = 0.0  # the share of the most frequent label: the top-1 of predicting that class everywhere


def logits_blob(layers: Iterable[pb.LayerParameter], where: str) -> tuple[str, str]:
    """(logits blob, label blob): the bottoms of the net's SoftmaxWithLoss layer (both engines validate on them)."""
    for lp in layers:
        if lp.type == "SoftmaxWithLoss":
            return lp.bottom[0], lp.bottom[1]
    raise UserError(f"{where}: no SoftmaxWithLoss layer in the TEST net, so there are no logits to score")


def score_logits(logits, labels):
    """`score` with numbered class names: the one scoring rule of both engines and `eval`."""
    return score(logits, labels, [ClassName(i, str(i), str(i)) for i in range(logits.shape[1])])


def evaluate_batches(next_batch: Callable[[], tuple[np.ndarray, np.ndarray]], total: int,
                     batch_size: int) -> EvalResult:
    """Every record once: ceil(total / batch) batches of (logits, labels), the wrapped-around tail dropped.

    Both engines validate through this (the torch net here, Caffe's test net in engines/pycaffe)."""
    t0 = time.perf_counter()
    logits, labels, seen = [], [], 0
    for _ in range(math.ceil(total / batch_size)):
        batch_logits, batch_labels = next_batch()
        take = min(batch_size, total - seen)
        logits.append(np.asarray(batch_logits, np.float32).reshape(len(batch_logits), -1)[:take])
        labels.append(np.asarray(batch_labels).reshape(-1)[:take].astype(np.int64))
        seen += take
    s = score_logits(np.concatenate(logits), np.concatenate(labels))
    majority = float(s.confusion.sum(axis=1).max() / s.count)
    return EvalResult(s.loss, s.top1, s.top5, s.count, time.perf_counter() - t0, majority)
