"""Net-level rewrites of the torch engine that keep Caffe's arithmetic and every blob's value: an in-place BatchNorm ->
Scale pair run as one fused kernel, and in-place ReLUs allowed to overwrite their blob where autograd permits."""

from __future__ import annotations

from squeezecaffe.caffe_rules.shapes import canonical_axis
from squeezecaffe.engines.torchcaffe.layer_base import CaffeLayer
from squeezecaffe.engines.torchcaffe.layers import BatchNorm, ReLU, Scale
from squeezecaffe.proto import pb


def fuse_batchnorm_scale(layers: list[pb.LayerParameter], modules: list[CaffeLayer]) -> int:
    """Let each in-place BatchNorm -> Scale(bias) pair run as one fused batch_norm with weight and bias.

    Only in-place chains (BN and Scale reading and writing the same blob) are fused, so no intermediate value
    that a blob name could show is lost; the Scale keeps its blobs (caffemodel I/O, solver, weight sharing are
    unchanged) and passes its input through. Same formula, one kernel forward and backward instead of four.
    Returns how many pairs were fused.
    """
    fused = 0
    for (lp, module), (next_lp, next_module) in zip(zip(layers, modules, strict=True),
                                                    zip(layers[1:], modules[1:], strict=True), strict=False):
        if not (isinstance(module, BatchNorm) and isinstance(next_module, Scale)):
            continue
        blob = lp.top[0]
        in_place = lp.bottom[0] == blob and list(next_lp.bottom) == [blob] and list(next_lp.top) == [blob]
        p = next_lp.scale_param
        if in_place and p.bias_term and canonical_axis(p.axis, 4) == 1 and p.num_axes == 1 and len(next_module.blobs) == 2:
            module._affine = [next_module]
            next_module.fused = True
            fused += 1
    return fused


# Layers whose gradient does not need their own output: an in-place ReLU right after one may overwrite it.
_OUTPUT_NOT_SAVED = {"Convolution", "InnerProduct", "BatchNorm", "Scale", "Eltwise", "Concat", "Pooling"}


def allow_in_place_relu(layers: list[pb.LayerParameter], modules: list[CaffeLayer]) -> int:
    """Let an in-place ReLU (top == bottom) overwrite its blob, as Caffe does, where that is safe for autograd:
    the blob's producer is a layer whose gradient does not read its output, and no layer between the producer and
    the ReLU reads the blob (it might have saved it for its gradient). No new tensor per ReLU in training (under
    no_grad every tensor is a leaf and the ReLU writes a new one), and the same values either way. Returns how
    many ReLUs run in place."""
    producer: dict[str, int] = {}
    readers: dict[str, list[int]] = {}
    allowed = 0
    for i, (lp, module) in enumerate(zip(layers, modules, strict=True)):
        if (isinstance(module, ReLU) and len(lp.bottom) == 1 and list(lp.top) == list(lp.bottom)
                and module.slope >= 0):  # torch has no in-place backward for a negative slope
            blob = lp.bottom[0]
            source = producer.get(blob)
            # a one-bottom Eltwise or Concat may hand its bottom through: overwriting it would change that blob too
            passes_through = len(layers[source].bottom) < 2 if source is not None else True
            if (source is not None and layers[source].type in _OUTPUT_NOT_SAVED
                    and not (layers[source].type in ("Eltwise", "Concat") and passes_through)
                    and not any(r > source for r in readers.get(blob, []))):
                module.in_place = True
                allowed += 1
        for name in lp.bottom:
            readers.setdefault(name, []).append(i)
        for name in lp.top:
            producer[name] = i
            readers[name] = []
    return allowed
