"""Whole-database evaluation of a TEST-phase CaffeNet: loss, top-1, top-5 over every record once.

Caffe's own test pass runs test_iter batches, so when the database size is not a multiple of the batch
the last batch wraps around and counts a few records twice. Here the records past the end are dropped,
so the figures are exactly over the database, computed from the logits that feed the net's
SoftmaxWithLoss layer.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from squeezecaffe.engines.torchcaffe.net import CaffeNet
from squeezecaffe.errors import UserError


@dataclass
class EvalResult:
    loss: float
    top1: float
    top5: float
    count: int
    seconds: float = 0.0


def logits_blob(net: CaffeNet) -> tuple[str, str]:
    """(logits blob, label blob): the bottoms of the net's SoftmaxWithLoss layer."""
    for lp in net.filtered.layer:
        if lp.type == "SoftmaxWithLoss":
            return lp.bottom[0], lp.bottom[1]
    raise UserError(f"{net.where}: no SoftmaxWithLoss layer in the TEST net, so there are no logits to score")


def score_logits(logits, labels):
    """`deploy.metrics.score` with numbered class names: the one scoring rule of both engines and `eval`."""
    from squeezecaffe.data_tools.layouts import numbered_labels
    from squeezecaffe.deploy.metrics import score

    return score(logits, labels, numbered_labels(logits.shape[1]))


@torch.no_grad()
def evaluate(net: CaffeNet) -> EvalResult:
    """Collects the logits of every record once and scores them with the same rule as `squeezecaffe eval`."""
    if len(net.loaders) != 1:
        raise UserError(f"{net.where}: evaluation needs exactly one Data layer in the TEST net")
    loader = next(iter(net.loaders.values()))
    logits_name, label_name = logits_blob(net)
    total = len(loader)
    net.eval()
    net.seek_data(0)
    t0 = time.perf_counter()
    logits, labels, seen = [], [], 0
    for _ in range(math.ceil(total / loader.batch_size)):
        blobs = net().blobs
        take = min(loader.batch_size, total - seen)
        logits.append(blobs[logits_name].float().reshape(len(blobs[logits_name]), -1)[:take].cpu())
        labels.append(blobs[label_name].long().reshape(-1)[:take].cpu())
        seen += take
    all_logits = torch.cat(logits).numpy()
    s = score_logits(all_logits, torch.cat(labels).numpy())
    return EvalResult(s.loss, s.top1, s.top5, s.count, time.perf_counter() - t0)
