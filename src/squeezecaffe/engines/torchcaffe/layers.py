"""Caffe layers as PyTorch modules, each reproducing Caffe's forward and backward arithmetic.

Every layer takes the list of its bottom tensors and returns the list of its tops, and owns its
parameter blobs in Caffe's order and layout (`self.blobs`), so a .caffemodel maps onto it without
transposes. Autograd supplies the backward pass except where Caffe's gradient is not the derivative
of its forward (SoftmaxWithLoss ignores its probability clamp; Eltwise MAX sends a tie to the first
bottom), which get their own autograd functions.
"""

from __future__ import annotations

import itertools
import math
import zlib

import torch
import torch.nn.functional as F
from torch import Tensor

from squeezecaffe.caffe_rules.shapes import canonical_axis, conv_geometry, pool_geometry, pool_out
from squeezecaffe.engines.torchcaffe import losses  # noqa: F401  (registers the loss and metric layers)
from squeezecaffe.engines.torchcaffe.layer_base import LAYERS, CaffeLayer, register, wide
from squeezecaffe.proto import pb

# --------------------------------------------------------------------------- learned layers


@register("Convolution")
class Convolution(CaffeLayer):
    def __init__(self, lp, info, ctx):
        super().__init__(lp, info, ctx)
        p = lp.convolution_param
        _, self.stride, self.pad, self.dilation = conv_geometry(p)
        self.group = p.group
        self.has_bias = p.bias_term

    def forward(self, bottoms):
        bias = self.blobs[1] if self.has_bias else None
        return [F.conv2d(bottoms[0], self.blobs[0], bias, self.stride, self.pad, self.dilation, self.group)]


@register("InnerProduct")
class InnerProduct(CaffeLayer):
    def __init__(self, lp, info, ctx):
        super().__init__(lp, info, ctx)
        p = lp.inner_product_param
        self.axis = p.axis
        self.transpose = p.transpose
        self.has_bias = p.bias_term
        self.num_output = p.num_output

    def forward(self, bottoms):
        x = bottoms[0]
        axis = canonical_axis(self.axis, x.dim())
        flat = x.reshape(*x.shape[:axis], -1)
        weight = self.blobs[0].t() if self.transpose else self.blobs[0]
        bias = self.blobs[1] if self.has_bias else None
        return [F.linear(flat, weight, bias)]


@register("BatchNorm")
class BatchNorm(CaffeLayer):
    """Caffe's BatchNorm: no affine part; blobs = [mean_sum, var_sum, scale_factor].

    TRAIN (unless use_global_stats): normalise with the batch statistics (variance biased) and fold
    them into the running sums: factor = lambda*factor + 1, mean_sum = lambda*mean_sum + mean,
    var_sum = lambda*var_sum + m/(m-1)*var. TEST: mean = mean_sum/factor, var = var_sum/factor.
    """

    def __init__(self, lp, info, ctx):
        super().__init__(lp, info, ctx)
        self._affine: list[Scale] = []  # a fused in-place Scale (see fuse_batchnorm_scale); a list: not a submodule
        p = lp.batch_norm_param
        self.use_global_stats = p.use_global_stats if p.HasField("use_global_stats") else ctx.phase == pb.TEST
        self.fraction = p.moving_average_fraction
        self.eps = p.eps

    def forward(self, bottoms):
        # The normalisation itself is torch's fused batch_norm kernel (forward and backward in one op each; the
        # same formula: biased batch variance, 1/sqrt(var + eps)); Caffe's running sums are updated beside it.
        x = bottoms[0]
        in_dtype = x.dtype
        x = x.to(self.blobs[0].dtype)  # statistics in the master precision, even under bf16 autocast
        weight = bias = None
        if self._affine:
            weight, bias = self._affine[0].blobs[0], self._affine[0].blobs[1]
        if self.use_global_stats:
            with torch.no_grad():
                factor = self.blobs[2][0]  # a tensor: no host sync on a GPU
                scale = torch.where(factor == 0, torch.zeros_like(factor), 1.0 / factor)
                mean, var = self.blobs[0] * scale, self.blobs[1] * scale
            out = F.batch_norm(x, mean, var, weight, bias, training=False, eps=self.eps)
        elif x.numel() == x.shape[1]:  # one value per channel: Caffe outputs 0 and folds a zero variance
            out = (x - x) / math.sqrt(self.eps)
            if weight is not None:
                out = out * weight.view(1, -1, *([1] * (x.dim() - 2))) + bias.view(1, -1, *([1] * (x.dim() - 2)))
            with torch.no_grad():
                self.blobs[2].mul_(self.fraction).add_(1.0)
                self.blobs[0].mul_(self.fraction).add_(x.detach().reshape(-1))
                self.blobs[1].mul_(self.fraction)
        else:
            # momentum 1 makes the kernel write this batch's mean and unbiased (m/(m-1)) variance into the two
            # buffers, in the same pass: exactly what Caffe folds into its running sums
            mean = torch.zeros_like(self.blobs[0], requires_grad=False)
            var = torch.zeros_like(self.blobs[1], requires_grad=False)
            out = F.batch_norm(x, mean, var, weight, bias, training=True, momentum=1.0, eps=self.eps)
            with torch.no_grad():
                self.blobs[2].mul_(self.fraction).add_(1.0)
                self.blobs[0].mul_(self.fraction).add_(mean)
                self.blobs[1].mul_(self.fraction).add_(var)
        return [out.to(in_dtype)]


def _param_view(blob: Tensor, x: Tensor, axis: int) -> Tensor:
    """A scale/bias blob shaped to broadcast over x starting at `axis`."""
    return blob.view(*([1] * axis), *blob.shape, *([1] * (x.dim() - axis - blob.dim())))


@register("Scale")
class Scale(CaffeLayer):
    """y = x * scale (+ bias); scale is a blob (one bottom) or the second bottom."""

    def __init__(self, lp, info, ctx):
        super().__init__(lp, info, ctx)
        p = lp.scale_param
        self.axis = p.axis
        self.has_bias = p.bias_term
        self.scale_from_bottom = len(lp.bottom) > 1
        self.fused = False  # done by the BatchNorm before it (see fuse_batchnorm_scale)

    def forward(self, bottoms):
        x = bottoms[0]
        if self.fused:
            return [x]
        axis = canonical_axis(self.axis, x.dim())
        scale = bottoms[1] if self.scale_from_bottom else self.blobs[0]
        y = x * _param_view(scale.to(x.dtype), x, axis)
        if self.has_bias:
            y = y + _param_view(self.blobs[-1].to(x.dtype), x, axis)
        return [y]


# --------------------------------------------------------------------------- activations and pooling


@register("ReLU")
class ReLU(CaffeLayer):
    """max(x, 0) (or leaky); in place in training where the prototxt says so and nothing needs the value it
    overwrites (see allow_in_place_relu)."""

    def __init__(self, lp, info, ctx):
        super().__init__(lp, info, ctx)
        self.slope = lp.relu_param.negative_slope
        self.in_place = False  # set by allow_in_place_relu where it is safe

    def forward(self, bottoms):
        x = bottoms[0]
        in_place = self.in_place and not x.is_leaf  # an input blob handed in by the caller is never overwritten
        return [F.leaky_relu(x, self.slope, inplace=in_place) if self.slope else F.relu(x, inplace=in_place)]


@register("Power")
class Power(CaffeLayer):
    """y = (shift + scale * x) ^ power, computed as Caffe does: the power is skipped when it is 1."""

    def forward(self, bottoms):
        p = self.lp.power_param
        y = bottoms[0]
        if p.scale != 1:
            y = y * p.scale
        if p.shift != 0:
            y = y + p.shift
        if p.power != 1:
            y = torch.pow(y, p.power)
        return [y]


@register("Pooling")
class Pooling(CaffeLayer):
    """MAX/AVE pooling with Caffe's ceil rounding, last-window rule and AVE divisor.

    PyTorch's ceil_mode applies the same output-size rule and the same AVE divisor (window clipped
    to H + pad) as Caffe, but only accepts pad <= kernel/2; for larger pads (Caffe allows up to
    kernel-1) the padding is applied explicitly and the output cut to Caffe's size, which keeps
    both the windows and the divisors unchanged.
    """

    def __init__(self, lp, info, ctx):
        super().__init__(lp, info, ctx)
        p = lp.pooling_param
        if p.pool == pb.PoolingParameter.STOCHASTIC:
            raise self.fail("STOCHASTIC pooling is not supported by the torch engine")
        self.method = p.pool
        self.param = p

    def forward(self, bottoms):
        x = bottoms[0]
        (kh, kw), (sh, sw), (ph, pw) = pool_geometry(self.param, (x.shape[2], x.shape[3]))
        if ph * 2 <= kh and pw * 2 <= kw:
            if self.method == pb.PoolingParameter.MAX:
                return [F.max_pool2d(x, (kh, kw), (sh, sw), (ph, pw), ceil_mode=True)]
            return [F.avg_pool2d(x, (kh, kw), (sh, sw), (ph, pw), ceil_mode=True, count_include_pad=True)]
        oh, ow = pool_out(x.shape[2], kh, sh, ph), pool_out(x.shape[3], kw, sw, pw)
        fill = -math.inf if self.method == pb.PoolingParameter.MAX else 0.0
        padded = F.pad(x, (pw, pw, ph, ph), value=fill)
        if self.method == pb.PoolingParameter.MAX:
            y = F.max_pool2d(padded, (kh, kw), (sh, sw), 0, ceil_mode=True)
        else:
            y = F.avg_pool2d(padded, (kh, kw), (sh, sw), 0, ceil_mode=True)
        return [y[:, :, :oh, :ow]]


@register("Dropout")
class Dropout(CaffeLayer):
    """Inverted dropout: TRAIN x*mask/(1-ratio), TEST identity.

    The mask comes from a generator seeded by (net seed, step key, layer name), so a run resumed
    from a snapshot draws the masks an uninterrupted run would have drawn.
    """

    def __init__(self, lp, info, ctx):
        super().__init__(lp, info, ctx)
        self.ratio = lp.dropout_param.dropout_ratio
        # str hashes are salted per process; a CRC of the name is stable across runs
        self.name_key = zlib.crc32(lp.name.encode())

    def forward(self, bottoms):
        x = bottoms[0]
        if self.ctx.phase != pb.TRAIN or self.ratio == 0:
            return [x]
        gen = torch.Generator(device=x.device)
        gen.manual_seed(hash((self.ctx.rng_seed, self.ctx.step_key, self.name_key)) & 0x7FFF_FFFF_FFFF_FFFF)
        keep = torch.rand(x.shape, generator=gen, device=x.device) >= self.ratio
        return [x * keep.to(x.dtype) * (1.0 / (1.0 - self.ratio))]


# --------------------------------------------------------------------------- structure


@register("Concat")
class Concat(CaffeLayer):
    def forward(self, bottoms):
        p = self.lp.concat_param
        axis = p.concat_dim if p.HasField("concat_dim") else p.axis
        return [torch.cat(bottoms, dim=canonical_axis(axis, bottoms[0].dim()))]


class _FirstMax(torch.autograd.Function):
    """max(a, b) whose gradient goes to `a` on ties, as Caffe's Eltwise MAX (strict > picks later bottoms)."""

    @staticmethod
    def forward(ctx, a, b):
        take_b = b > a
        ctx.save_for_backward(take_b)
        return torch.where(take_b, b, a)

    @staticmethod
    def backward(ctx, grad):
        (take_b,) = ctx.saved_tensors
        zero = torch.zeros_like(grad)
        return torch.where(take_b, zero, grad), torch.where(take_b, grad, zero)


@register("Eltwise")
class Eltwise(CaffeLayer):
    def __init__(self, lp, info, ctx):
        super().__init__(lp, info, ctx)
        p = lp.eltwise_param
        self.op = p.operation
        self.coeff = list(p.coeff) or [1.0] * len(lp.bottom)
        if self.op == pb.EltwiseParameter.SUM and len(self.coeff) != len(lp.bottom):
            raise self.fail(f"{len(self.coeff)} coeff for {len(lp.bottom)} bottoms")

    def forward(self, bottoms):
        if self.op == pb.EltwiseParameter.SUM:
            out = bottoms[0] if self.coeff[0] == 1 else bottoms[0] * self.coeff[0]
            for c, b in zip(self.coeff[1:], bottoms[1:], strict=True):
                out = out + (b if c == 1 else b * c)
            return [out]
        out = bottoms[0]
        for b in bottoms[1:]:
            out = out * b if self.op == pb.EltwiseParameter.PROD else _FirstMax.apply(out, b)
        return [out]


@register("Flatten")
class Flatten(CaffeLayer):
    def forward(self, bottoms):
        p = self.lp.flatten_param
        x = bottoms[0]
        return [torch.flatten(x, canonical_axis(p.axis, x.dim()), canonical_axis(p.end_axis, x.dim()))]


@register("Slice")
class Slice(CaffeLayer):
    """Cuts the bottom along `axis` at `slice_point`s, or into as many equal parts as there are tops."""

    def forward(self, bottoms):
        x = bottoms[0]
        p = self.lp.slice_param
        axis = canonical_axis(p.slice_dim if p.HasField("slice_dim") else p.axis, x.dim())
        points = [0, *p.slice_point, x.shape[axis]] if p.slice_point else \
            [i * x.shape[axis] // len(self.lp.top) for i in range(len(self.lp.top) + 1)]
        return [x.narrow(axis, a, b - a) for a, b in itertools.pairwise(points)]


@register("Split")
class Split(CaffeLayer):
    def forward(self, bottoms):
        return [bottoms[0]] * len(self.lp.top)


@register("Softmax")
class Softmax(CaffeLayer):
    def forward(self, bottoms):
        x = bottoms[0]
        return [torch.softmax(wide(x), dim=canonical_axis(self.lp.softmax_param.axis, x.dim())).to(x.dtype)]


# --------------------------------------------------------------------------- inputs


@register("Input")
class Input(CaffeLayer):
    """Tops are fed by the caller; the net checks them against input_param's shapes."""

    def forward(self, bottoms):  # pragma: no cover - the net feeds Input tops directly
        raise RuntimeError("Input layers are fed by CaffeNet.forward")


@register("Data")
class DataLayer(CaffeLayer):
    """A Data layer: the net attaches its DataLayerLoader and moves the batches to its device."""

    loader = None  # a DataLayerLoader, set by the net

    def forward(self, bottoms):  # pragma: no cover - the net pulls batches itself
        raise RuntimeError("Data layers are fed by CaffeNet.forward")


SUPPORTED_TYPES = sorted(LAYERS)
