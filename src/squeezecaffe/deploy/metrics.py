"""Classification figures from logits and labels: one function, so every runtime is scored alike.

Top-k follows Caffe's Accuracy layer: a sample counts when fewer than k classes score strictly higher
than the true one (ties go to the true class). The confusion matrix uses the arg-max prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from squeezecaffe.data_tools.layouts import ClassLabel
from squeezecaffe.deploy.runtimes import softmax


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


def score(logits: np.ndarray, labels: np.ndarray, classes: list[ClassLabel]) -> Scores:
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
