"""Shape, parameter and FLOP inference from any NetParameter (ours or a hand-written prototxt).

Pure arithmetic over the prototxt, no framework: the same rules Caffe's Reshape() applies
(convolution floor rounding, pooling ceil rounding with the last-window rule), so the figures
hold for every engine that runs the net.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from squeezecaffe.caffe_rules.state import filter_net, make_state
from squeezecaffe.errors import UserError
from squeezecaffe.proto import pb

Shape = tuple[int, ...]


@dataclass
class ParamBlob:
    shape: Shape
    trainable: bool  # learned by the solver (not BatchNorm's running statistics)
    kernel: bool  # a Convolution/InnerProduct weight (the "weights" convention of the Tiny-ImageNet paper)

    @property
    def count(self) -> int:
        return math.prod(self.shape)


@dataclass
class LayerInfo:
    layer: pb.LayerParameter
    bottom_shapes: list[Shape]
    top_shapes: list[Shape]
    params: list[ParamBlob] = field(default_factory=list)
    macs: int = 0  # multiply-accumulates per forward of the whole batch

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def type(self) -> str:
        return self.layer.type


def _pair(repeated, single_h: int | None, single_w: int | None, default: int) -> tuple[int, int]:
    """Caffe's spatial argument: explicit _h/_w win, else the repeated value (one for both or one each)."""
    if single_h is not None and single_w is not None:
        return single_h, single_w
    values = list(repeated)
    if not values:
        return default, default
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def conv_geometry(p: pb.ConvolutionParameter) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(kernel, stride, pad, dilation) as (h, w) pairs."""
    kernel = _pair(p.kernel_size, p.kernel_h if p.HasField("kernel_h") else None,
                   p.kernel_w if p.HasField("kernel_w") else None, 0)
    stride = _pair(p.stride, p.stride_h if p.HasField("stride_h") else None,
                   p.stride_w if p.HasField("stride_w") else None, 1)
    pad = _pair(p.pad, p.pad_h if p.HasField("pad_h") else None, p.pad_w if p.HasField("pad_w") else None, 0)
    dilation = _pair(p.dilation, None, None, 1)
    return kernel, stride, pad, dilation


def pool_geometry(p: pb.PoolingParameter, in_hw: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """(kernel, stride, pad) as (h, w) pairs; global pooling covers the whole input."""
    if p.global_pooling:
        return in_hw, (1, 1), (0, 0)
    kernel = (p.kernel_h, p.kernel_w) if p.HasField("kernel_h") else (p.kernel_size, p.kernel_size)
    stride = (p.stride_h, p.stride_w) if p.HasField("stride_h") else (p.stride, p.stride)
    pad = (p.pad_h, p.pad_w) if p.HasField("pad_h") else (p.pad, p.pad)
    return kernel, stride, pad


def conv_out(size: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def pool_out(size: int, kernel: int, stride: int, pad: int) -> int:
    """Caffe rounds up, then drops a last window that would start inside the bottom padding only."""
    out = math.ceil((size + 2 * pad - kernel) / stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def canonical_axis(axis: int, ndim: int) -> int:
    """Caffe's CanonicalAxisIndex: a negative axis counts from the end."""
    return axis + ndim if axis < 0 else axis


class _Inferer:
    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, layer: pb.LayerParameter, msg: str) -> UserError:
        return UserError(f"{self.where}: layer '{layer.name}' ({layer.type}): {msg}")

    def infer(self, layer: pb.LayerParameter, bottoms: list[Shape], data_shape: Shape | None) -> LayerInfo:
        handler = getattr(self, f"_{layer.type.lower()}", None)
        if handler is None:
            raise self.fail(layer, "layer type not supported by shape inference")
        info = LayerInfo(layer, bottoms, [])
        handler(layer, bottoms, info, data_shape)
        return info

    # --- inputs
    def _input(self, layer, bottoms, info, data_shape):
        shapes = [tuple(int(d) for d in s.dim) for s in layer.input_param.shape]
        if len(shapes) == 1:
            shapes = shapes * len(layer.top)
        info.top_shapes = shapes

    def _data(self, layer, bottoms, info, data_shape):
        batch = layer.data_param.batch_size
        crop = layer.transform_param.crop_size
        if crop:
            channels = data_shape[1] if data_shape else 3
            shape = (batch, channels, crop, crop)
        elif data_shape is not None:
            shape = (batch, *data_shape[1:])
        else:
            raise self.fail(layer, "the image size of a Data layer without crop_size is in the database; "
                                   "give it with --input HxW")
        info.top_shapes = [shape, (batch,)][: len(layer.top)]

    # --- learned layers
    def _convolution(self, layer, bottoms, info, data_shape):
        p = layer.convolution_param
        n, c, h, w = bottoms[0]
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv_geometry(p)
        if kh <= 0 or kw <= 0:
            raise self.fail(layer, "kernel size not set")
        oh, ow = conv_out(h, kh, sh, ph, dh), conv_out(w, kw, sw, pw, dw)
        if oh <= 0 or ow <= 0:
            raise self.fail(layer, f"input {h}x{w} is smaller than the kernel {kh}x{kw}")
        group = p.group
        if c % group or p.num_output % group:
            raise self.fail(layer, f"channels {c} and num_output {p.num_output} must divide by group {group}")
        info.top_shapes = [(n, p.num_output, oh, ow)]
        info.params.append(ParamBlob((p.num_output, c // group, kh, kw), True, True))
        if p.bias_term:
            info.params.append(ParamBlob((p.num_output,), True, False))
        info.macs = n * p.num_output * oh * ow * (c // group) * kh * kw

    def _innerproduct(self, layer, bottoms, info, data_shape):
        p = layer.inner_product_param
        axis = canonical_axis(p.axis, len(bottoms[0]))
        fan_in = math.prod(bottoms[0][axis:])
        outer = math.prod(bottoms[0][:axis])
        info.top_shapes = [(*bottoms[0][:axis], p.num_output)]
        weight = (fan_in, p.num_output) if p.transpose else (p.num_output, fan_in)
        info.params.append(ParamBlob(weight, True, True))
        if p.bias_term:
            info.params.append(ParamBlob((p.num_output,), True, False))
        info.macs = outer * fan_in * p.num_output

    def _batchnorm(self, layer, bottoms, info, data_shape):
        c = bottoms[0][1]
        info.top_shapes = [bottoms[0]]
        info.params = [ParamBlob((c,), False, False), ParamBlob((c,), False, False), ParamBlob((1,), False, False)]

    def _scale(self, layer, bottoms, info, data_shape):
        p = layer.scale_param
        info.top_shapes = [bottoms[0]]
        if len(bottoms) == 1:
            axis = canonical_axis(p.axis, len(bottoms[0]))
            end = len(bottoms[0]) if p.num_axes == -1 else axis + p.num_axes
            shape = tuple(bottoms[0][axis:end])
            info.params.append(ParamBlob(shape, True, False))
        if p.bias_term:
            axis = canonical_axis(p.axis, len(bottoms[0]))
            end = len(bottoms[0]) if p.num_axes == -1 else axis + p.num_axes
            info.params.append(ParamBlob(tuple(bottoms[0][axis:end]), True, False))

    # --- shape-only layers
    def _pooling(self, layer, bottoms, info, data_shape):
        n, c, h, w = bottoms[0]
        (kh, kw), (sh, sw), (ph, pw) = pool_geometry(layer.pooling_param, (h, w))
        if kh <= 0 or kw <= 0:
            raise self.fail(layer, "kernel size not set")
        if ph >= kh or pw >= kw:
            raise self.fail(layer, "pad must be smaller than the kernel")
        info.top_shapes = [(n, c, pool_out(h, kh, sh, ph), pool_out(w, kw, sw, pw))]

    def _same(self, layer, bottoms, info, data_shape):
        info.top_shapes = [bottoms[0]] * max(1, len(layer.top))

    _relu = _dropout = _softmax = _sigmoid = _tanh = _lrn = _power = _same

    def _slice(self, layer, bottoms, info, data_shape):
        p = layer.slice_param
        shape = bottoms[0]
        axis = canonical_axis(p.slice_dim if p.HasField("slice_dim") else p.axis, len(shape))
        tops = len(layer.top)
        if p.slice_point:
            points = [0, *p.slice_point, shape[axis]]
            if len(points) != tops + 1 or any(b <= a for a, b in itertools.pairwise(points)):
                raise self.fail(layer, f"slice points {list(p.slice_point)} do not cut axis {axis} (size "
                                       f"{shape[axis]}) into {tops} parts")
        elif shape[axis] % tops:
            raise self.fail(layer, f"axis {axis} of size {shape[axis]} does not split into {tops} equal parts")
        else:
            points = [i * shape[axis] // tops for i in range(tops + 1)]
        info.top_shapes = [(*shape[:axis], b - a, *shape[axis + 1 :]) for a, b in itertools.pairwise(points)]

    def _split(self, layer, bottoms, info, data_shape):
        info.top_shapes = [bottoms[0]] * len(layer.top)

    def _concat(self, layer, bottoms, info, data_shape):
        axis = canonical_axis(layer.concat_param.axis, len(bottoms[0]))
        for b in bottoms[1:]:
            if len(b) != len(bottoms[0]) or any(b[i] != bottoms[0][i] for i in range(len(b)) if i != axis):
                raise self.fail(layer, f"bottom shapes {bottoms} differ outside axis {axis}")
        out = list(bottoms[0])
        out[axis] = sum(b[axis] for b in bottoms)
        info.top_shapes = [tuple(out)]

    def _eltwise(self, layer, bottoms, info, data_shape):
        if any(b != bottoms[0] for b in bottoms):
            raise self.fail(layer, f"bottom shapes differ: {' vs '.join('x'.join(map(str, b)) for b in bottoms)}")
        info.top_shapes = [bottoms[0]]

    def _flatten(self, layer, bottoms, info, data_shape):
        p = layer.flatten_param
        shape = bottoms[0]
        a, e = canonical_axis(p.axis, len(shape)), canonical_axis(p.end_axis, len(shape))
        info.top_shapes = [(*shape[:a], math.prod(shape[a : e + 1]), *shape[e + 1 :])]

    def _softmaxwithloss(self, layer, bottoms, info, data_shape):
        info.top_shapes = [()] + ([bottoms[0]] if len(layer.top) > 1 else [])

    def _accuracy(self, layer, bottoms, info, data_shape):
        info.top_shapes = [()] * max(1, len(layer.top))


def net_input_shapes(net: pb.NetParameter) -> dict[str, Shape]:
    """Inputs declared the legacy way (input + input_shape / input_dim)."""
    shapes: dict[str, Shape] = {}
    for i, name in enumerate(net.input):
        if i < len(net.input_shape):
            shapes[name] = tuple(int(d) for d in net.input_shape[i].dim)
        elif len(net.input_dim) >= 4 * (i + 1):
            shapes[name] = tuple(int(d) for d in net.input_dim[4 * i : 4 * i + 4])
    return shapes


def infer_net(
    net: pb.NetParameter,
    phase: str = "TEST",
    data_shape: Shape | None = None,
    where: str = "net",
) -> list[LayerInfo]:
    """Per-layer shapes, parameter blobs and MACs for the layers present in `phase`.

    `data_shape` (N, C, H, W) sizes Data layers whose image size lives in the database.
    """
    return infer_layers(filter_net(net, make_state(phase)), where=where, data_shape=data_shape)


def infer_layers(
    filtered: pb.NetParameter,
    where: str = "net",
    data_shape: Shape | None = None,
    data_shapes: dict[str, Shape] | None = None,
) -> list[LayerInfo]:
    """`infer_net` over a net already filtered to one NetState; `data_shapes` sizes Data layers by name."""
    blobs: dict[str, Shape] = net_input_shapes(filtered)
    inferer = _Inferer(where)
    infos = []
    for layer in filtered.layer:
        try:
            bottoms = [blobs[b] for b in layer.bottom]
        except KeyError as exc:
            raise inferer.fail(layer, f"bottom blob {exc.args[0]!r} is not produced by any earlier layer") from None
        shape = (data_shapes or {}).get(layer.name, data_shape)
        info = inferer.infer(layer, bottoms, shape)
        for top, top_shape in zip(layer.top, info.top_shapes, strict=False):
            blobs[top] = top_shape
        infos.append(info)
    return infos
