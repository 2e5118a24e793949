"""Whole-database evaluation of a TEST-phase CaffeNet: loss, top-1, top-5 over every record once.

Caffe's own test pass runs test_iter batches, so when the database size is not a multiple of the batch
the last batch wraps around and counts a few records twice. Here the records past the end are dropped,
so the figures are exactly over the database, computed from the logits that feed the net's
SoftmaxWithLoss layer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from squeezecaffe.engines.torchcaffe.net import CaffeNet
from squeezecaffe.errors import UserError
from squeezecaffe.proto import pb


@dataclass
class EvalResult:
    loss: float
    top1: float
    top5: float
    count: int
    seconds: float = 0.0


def logits_blob(layers: Iterable[pb.LayerParameter], where: str) -> tuple[str, str]:
    """(logits blob, label blob): the bottoms of the net's SoftmaxWithLoss layer (both engines validate on them)."""
    for lp in layers:
        if lp.type == "SoftmaxWithLoss":
            return lp.bottom[0], lp.bottom[1]
    raise UserError(f"{where}: no SoftmaxWithLoss layer in the TEST net, so there are no logits to score")


def score_logits(logits, labels):
    """`deploy.metrics.score` with numbered class names: the one scoring rule of both engines and `eval`."""
    from squeezecaffe.data_tools.layouts import numbered_labels
    from squeezecaffe.deploy.metrics import score

    return score(logits, labels, numbered_labels(logits.shape[1]))


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
    return EvalResult(s.loss, s.top1, s.top5, s.count, time.perf_counter() - t0)


@torch.no_grad()
def evaluate(net: CaffeNet) -> EvalResult:
    """Collects the logits of every record once and scores them with the same rule as `squeezecaffe eval`."""
    if len(net.loaders) != 1:
        raise UserError(f"{net.where}: evaluation needs exactly one Data layer in the TEST net")
    loader = next(iter(net.loaders.values()))
    logits_name, label_name = logits_blob(net.filtered.layer, net.where)
    net.eval()
    net.seek_data(0)

    def next_batch():
        blobs = net().blobs
        return blobs[logits_name].float().cpu().numpy(), blobs[label_name].cpu().numpy()

    return evaluate_batches(next_batch, len(loader), loader.batch_size)
