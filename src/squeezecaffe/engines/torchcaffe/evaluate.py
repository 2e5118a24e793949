"""Whole-database evaluation of a TEST-phase CaffeNet (the torch engine): loss, top-1, top-5 over every record
once, from the logits that feed the net's SoftmaxWithLoss layer, scored by `squeezecaffe.scoring`."""

from __future__ import annotations

import torch

from squeezecaffe.engines.torchcaffe.net import CaffeNet
from squeezecaffe.errors import UserError
from squeezecaffe.scoring import EvalResult, evaluate_batches, logits_blob


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
