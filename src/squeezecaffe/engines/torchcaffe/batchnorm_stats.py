"""Re-estimating BatchNorm's statistics at the current weights before a validation or a snapshot.

Why: Caffe's BatchNorm keeps exponentially weighted running sums of the batch statistics it saw during
training. While a high rate still moves the weights, those sums describe weights of hundreds of iterations
ago, and the TEST net (which normalises with them) scores far below what the weights can do: the full demo
read 37.2% validation top-1 after epoch 2 (real Caffe scores that snapshot the same) while the same weights
with fresh statistics score 91.2% (measured by hand before bench/results existed).

How: a second TRAIN-phase net shares every blob with the training net and has its own Data layer reader.
The BatchNorm sums are cleared and that net runs forward (no gradient, no update) over the training records
the run read most recently: each BatchNorm layer folds the batches in with its own rule
(factor = lambda*factor + 1, sums likewise), so the result is the layer's weighted mean over those batches
alone, all computed at the current weights. The records are a function of the iteration, so a resumed run
re-estimates exactly as an uninterrupted one would. Training itself is untouched: in TRAIN a BatchNorm
normalises with the batch's own statistics and never reads the sums.
"""

from __future__ import annotations

from pathlib import Path

import torch

from squeezecaffe.engines.torchcaffe.distributed import Dist, average_
from squeezecaffe.engines.torchcaffe.layers import BatchNorm
from squeezecaffe.engines.torchcaffe.net import CaffeNet
from squeezecaffe.engines.torchcaffe.options import EngineOptions
from squeezecaffe.proto import pb, read_text


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


def reestimated_model(net_path: Path, model: pb.NetParameter, images: int, options: EngineOptions, seed: int
                      ) -> tuple[pb.NetParameter, int]:
    """A copy of `model` whose BatchNorm statistics are re-estimated at its own weights: the TRAIN net of
    `net_path` (a train_val prototxt) forwards the first `images` records of its training database (rounded up to
    whole batches, at most one pass; the crops and mirrors of seed `seed`). Only the BatchNorm blobs change.
    Returns the copy and the images used (0: no BatchNorm that accumulates, or no Data layer).

    For weights that no training run produced, e.g. a pruned or quantized model (compress), whose convolutions no
    longer output what the dense model's statistics describe. One net is built, without a solver or a TEST net."""
    from squeezecaffe.engines.torchcaffe.net import DataOptions
    from squeezecaffe.engines.torchcaffe.weights import copy_weights, tensor_to_blob

    net = CaffeNet(read_text(net_path, pb.NetParameter), "TRAIN", where=str(net_path), base_dir=net_path.parent,
                   data=DataOptions.for_engine(options, seed))
    options.apply(net)
    copy_weights(net, model, "the weights to re-estimate")
    loader = next(iter(net.loaders.values()), None)
    if loader is None:
        return model, 0
    batches = -(-min(images, len(loader)) // loader.batch_size)
    try:
        used = reestimate(net, batches, batches * loader.batch_size, loader.batch_size, Dist())
    finally:
        net.close()  # its reader's worker processes
    fresh = {layer.lp.name: layer for layer in accumulating_layers(net)}
    out = pb.NetParameter()
    out.CopyFrom(model)
    for lp in out.layer:
        if lp.name in fresh:
            del lp.blobs[:]
            lp.blobs.extend(tensor_to_blob(blob) for blob in fresh[lp.name].blobs)
    return out, used
