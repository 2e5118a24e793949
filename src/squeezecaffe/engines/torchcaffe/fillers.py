"""Caffe's weight fillers, drawn from one seeded generator in layer order.

Caffe's defaults apply: a weight or bias without a filler is constant 0 (FillerParameter's default),
except a Scale layer's scale, which starts at 1 (identity).
"""

from __future__ import annotations

import math

import torch

from squeezecaffe.errors import UserError
from squeezecaffe.proto import pb


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """Caffe's fan_in = count / shape[0], fan_out = count / shape[1]."""
    count = math.prod(shape)
    fan_in = count // shape[0] if shape else 1
    fan_out = count // shape[1] if len(shape) > 1 else count
    return fan_in, fan_out


def _norm_fan(fp: pb.FillerParameter, shape: tuple[int, ...]) -> float:
    fan_in, fan_out = _fans(shape)
    if fp.variance_norm == pb.FillerParameter.FAN_OUT:
        return float(fan_out)
    if fp.variance_norm == pb.FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    return float(fan_in)


def fill_tensor(t: torch.Tensor, fp: pb.FillerParameter, gen: torch.Generator, where: str) -> None:
    """Fill `t` in place (values drawn in float32 on the CPU, as Caffe draws them, then copied)."""
    shape = tuple(t.shape)
    kind = fp.type
    if kind == "constant":
        values = torch.full(shape, fp.value, dtype=torch.float32)
    elif kind == "uniform":
        values = torch.empty(shape).uniform_(fp.min, fp.max, generator=gen)
    elif kind == "gaussian":
        values = torch.empty(shape).normal_(fp.mean, fp.std, generator=gen)
        if fp.sparse >= 0:  # keep each weight with probability sparse / num_outputs
            keep = fp.sparse / shape[0]
            values *= (torch.rand(shape, generator=gen) < keep).float()
    elif kind == "xavier":
        limit = math.sqrt(3.0 / _norm_fan(fp, shape))
        values = torch.empty(shape).uniform_(-limit, limit, generator=gen)
    elif kind == "msra":
        values = torch.empty(shape).normal_(0.0, math.sqrt(2.0 / _norm_fan(fp, shape)), generator=gen)
    elif kind == "positive_unitball":
        values = torch.rand(shape, generator=gen)
        rows = values.reshape(shape[0], -1)
        rows /= rows.sum(dim=1, keepdim=True)
    else:
        raise UserError(f"{where}: filler type '{kind}' is not supported "
                        "(constant, uniform, gaussian, xavier, msra, positive_unitball)")
    with torch.no_grad():
        t.copy_(values.to(t.dtype))


def blob_fillers(lp: pb.LayerParameter) -> list[pb.FillerParameter]:
    """The filler of each parameter blob of a layer, in blob order."""
    if lp.type == "Convolution":
        return [lp.convolution_param.weight_filler, lp.convolution_param.bias_filler]
    if lp.type == "InnerProduct":
        return [lp.inner_product_param.weight_filler, lp.inner_product_param.bias_filler]
    if lp.type == "Scale":
        p = lp.scale_param
        scale = p.filler if p.HasField("filler") else pb.FillerParameter(type="constant", value=1.0)
        if len(lp.bottom) > 1:  # the scale is a bottom: the only blob is the bias
            return [p.bias_filler]
        return [scale, p.bias_filler]
    return []  # BatchNorm statistics start at zero


def fill_net(net, seed: int) -> None:
    """Initialise every parameter blob of a CaffeNet from its prototxt fillers with one seeded stream."""
    gen = torch.Generator().manual_seed(seed)
    for name, module in zip(net.layer_names, net.layers, strict=True):
        fillers = blob_fillers(module.lp)
        for i, blob in enumerate(module.blobs):
            if i < len(fillers):
                fill_tensor(blob.data, fillers[i], gen, f"layer '{name}' blob {i}")
            else:
                with torch.no_grad():
                    blob.zero_()
