"""Re-estimating BatchNorm's statistics at the current weights before a validation or a snapshot.

Why: Caffe's BatchNorm keeps exponentially weighted running sums of the batch statistics it saw during
training. While a high rate still moves the weights, those sums describe weights of hundreds of iterations
ago, and the TEST net (which normalises with them) scores far below what the weights can do: the full demo
read 37.2% validation top-1 after epoch 2 (real Caffe scores that snapshot the same) while the same weights
with fresh statistics score 91.2% (docs/training.md).

How: a second TRAIN-phase net shares every blob with the training net and has its own Data layer reader.
The BatchNorm sums are cleared and that net runs forward (no gradient, no update) over the training records
the run read most recently: each BatchNorm layer folds the batches in with its own rule
(factor = lambda*factor + 1, sums likewise), so the result is the layer's weighted mean over those batches
alone, all computed at the current weights. The records are a function of the iteration, so a resumed run
re-estimates exactly as an uninterrupted one would. Training itself is untouched: in TRAIN a BatchNorm
normalises with the batch's own statistics and never reads the sums.
"""

from __future__ import annotations

import torch

from squeezecaffe.engines.torchcaffe.distributed import Dist, average_
from squeezecaffe.engines.torchcaffe.layers import BatchNorm
from squeezecaffe.engines.torchcaffe.net import CaffeNet


def accumulating_layers(net: CaffeNet) -> list[BatchNorm]:
    """The BatchNorm layers that fold batch statistics into their sums in this net's phase."""
    return [m for m in net.layers if isinstance(m, BatchNorm) and not m.use_global_stats]


@torch.no_grad()
def reestimate(net: CaffeNet, batches: int, end_position: int, global_batch: int, dist: Dist) -> int:
    """Clear the BatchNorm sums of `net` (shared with the training net) and fold in `batches` batches that end
    at record `end_position` (counted from the start of the run, as the loader counts and wraps). Every rank
    reads its own share; the sums are averaged over the ranks. Returns the images used (0: nothing to
    re-estimate, the net has no accumulating BatchNorm or no Data layer)."""
    layers = accumulating_layers(net)
    if not layers or not net.loaders or batches <= 0:
        return 0
    blobs = [blob for layer in layers for blob in layer.blobs]
    for blob in blobs:
        blob.zero_()
    net.seek_data(max(0, end_position - batches * global_batch))  # with the crops and mirrors training drew there
    net.train()
    for k in range(batches):
        net.step_key = k  # Dropout masks of its own, drawn the same way each time
        net({})
    average_(blobs, dist)
    return batches * global_batch
