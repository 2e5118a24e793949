"""Module builders: the building blocks every registered variant is made of.

Naming follows the SqueezeNet release (conv1, fire2/squeeze1x1, fire2/expand3x3, conv10), so
released weights load by name. Helper layers hang under their conv: `<conv>/bn`,
`<conv>/scale`, `<conv>/relu`, which also lets `summary` group a module's layers into one row.
"""

from __future__ import annotations

from dataclasses import dataclass

from squeezecaffe.netgen.dsl import NetBuilder

# The three BatchNorm blobs are running statistics, not learned: lr_mult 0 keeps every Caffe fork's
# solver from "updating" them (newer Caffe does this itself; older forks need it spelled out).
BN_FROZEN_PARAMS = [dict(lr_mult=0, decay_mult=0)] * 3


@dataclass(frozen=True)
class ConvStyle:
    """How every convolution of a net is emitted."""

    batchnorm: bool  # conv (no bias) -> BatchNorm -> Scale(bias), as the Tiny-ImageNet and ResNet nets
    weight_filler: str = "xavier"  # Caffe filler type for conv kernels
    emit_params: bool = True  # lr/decay multipliers (train_val); deploy nets leave them out
    bn_fraction: float | None = None  # BatchNorm's moving_average_fraction (None: Caffe's default 0.999)


def _sub(name: str, leaf: str) -> str:
    return f"{name}/{leaf}"


def conv(
    n: NetBuilder,
    name: str,
    bottom: str,
    num_output: int,
    kernel: int | tuple[int, int],
    style: ConvStyle,
    stride: int = 1,
    pad: int | tuple[int, int] = 0,
    relu: bool = True,
    filler: dict | None = None,
) -> str:
    """Convolution [+ BatchNorm + Scale] [+ ReLU]; the helper layers work in place."""
    kh, kw = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    ph, pw = pad if isinstance(pad, tuple) else (pad, pad)
    geometry: dict = {}
    if kh == kw:
        geometry["kernel_size"] = kh
    else:
        geometry.update(kernel_h=kh, kernel_w=kw)
    if ph == pw:
        if ph:
            geometry["pad"] = ph
    else:
        geometry.update(pad_h=ph, pad_w=pw)
    if stride != 1:
        geometry["stride"] = stride
    bias = not style.batchnorm
    params = None
    if style.emit_params:
        params = [dict(lr_mult=1, decay_mult=1)] + ([dict(lr_mult=2, decay_mult=0)] if bias else [])
    top = n.layer(
        "Convolution",
        bottom,
        name=name,
        param=params,
        num_output=num_output,
        bias_term=None if bias else False,
        weight_filler=filler or dict(type=style.weight_filler),
        bias_filler=dict(type="constant", value=0) if bias else None,
        **geometry,
    )
    if style.batchnorm:
        n.layer("BatchNorm", top, name=_sub(name, "bn"), tops=[top],
                param=BN_FROZEN_PARAMS if style.emit_params else None, moving_average_fraction=style.bn_fraction)
        n.layer("Scale", top, name=_sub(name, "scale"), tops=[top], bias_term=True)
    if relu:
        n.layer("ReLU", top, name=_sub(name, "relu"), tops=[top])
    return top


def fire(n: NetBuilder, name: str, bottom: str, squeeze: int, expand1x1: int, expand3x3: int,
         style: ConvStyle) -> str:
    """Fire: squeeze 1x1 -> ReLU -> [expand 1x1 | expand 3x3 pad 1] -> concat (e1x1 + e3x3 channels)."""
    s = conv(n, _sub(name, "squeeze1x1"), bottom, squeeze, 1, style)
    e1 = conv(n, _sub(name, "expand1x1"), s, expand1x1, 1, style)
    e3 = conv(n, _sub(name, "expand3x3"), s, expand3x3, 3, style, pad=1)
    return n.layer("Concat", e1, e3, name=_sub(name, "concat"))


def bypass_sum(n: NetBuilder, name: str, main: str, shortcut: str) -> str:
    return n.layer("Eltwise", main, shortcut, name=_sub(name, "bypass"), operation="SUM")


def fire_type_b(n: NetBuilder, name: str, bottom: str, squeeze: int, expand1x1: int, expand3x3: int,
                style: ConvStyle) -> str:
    """TypeB: Fire + identity bypass (Eltwise SUM). The input must already have e1x1 + e3x3 channels."""
    return bypass_sum(n, name, fire(n, name, bottom, squeeze, expand1x1, expand3x3, style), bottom)


def fire_type_a(n: NetBuilder, name: str, bottom: str, squeeze: int, expand1x1: int, expand3x3: int,
                style: ConvStyle) -> str:
    """TypeA: Fire + a 1x1 conv bypass (+BN+Scale, no ReLU) to the output width e1x1 + e3x3."""
    main = fire(n, name, bottom, squeeze, expand1x1, expand3x3, style)
    shortcut = conv(n, _sub(name, "bypass_conv"), bottom, expand1x1 + expand3x3, 1, style, relu=False)
    return bypass_sum(n, name, main, shortcut)


def _conv3x3(n: NetBuilder, name: str, bottom: str, width: int, style: ConvStyle, bottleneck: int | None,
             stride: int = 1, relu: bool = True) -> str:
    """A 3x3 convolution; with `bottleneck`, factorized as a 1x1 reduction (+BN+ReLU) to that many channels
    followed by the 3x3 (the reduction carries the stride, so the 3x3 works at the output resolution)."""
    if bottleneck:
        bottom = conv(n, f"{name}_reduce", bottom, bottleneck, 1, style, stride=stride)
        stride = 1
    return conv(n, name, bottom, width, 3, style, stride=stride, pad=1, relu=relu)


def resnet_basic_block(n: NetBuilder, name: str, bottom: str, in_width: int, width: int, stride: int,
                       style: ConvStyle, bottleneck: int | None = None) -> str:
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut (1x1 conv + BN when the shape changes), then ReLU;
    with `bottleneck`, each 3x3 is factorized through a 1x1 reduction (`_conv3x3`)."""
    a = _conv3x3(n, _sub(name, "conv1"), bottom, width, style, bottleneck, stride=stride)
    b = _conv3x3(n, _sub(name, "conv2"), a, width, style, bottleneck, relu=False)
    shortcut = bottom
    if stride != 1 or in_width != width:
        shortcut = conv(n, _sub(name, "shortcut"), bottom, width, 1, style, stride=stride, relu=False)
    out = n.layer("Eltwise", b, shortcut, name=_sub(name, "sum"), operation="SUM")
    n.layer("ReLU", out, name=_sub(name, "relu"), tops=[out])
    return out


def squeezenext_block(n: NetBuilder, name: str, bottom: str, out: int, style: ConvStyle) -> str:
    """SqueezeNext block without the residual add: 1x1 (C) -> 1x1 (C/2) -> 3x1 (C) -> 1x3 (C) -> 1x1 (C)."""
    r1 = conv(n, _sub(name, "reduce1"), bottom, out, 1, style)
    r2 = conv(n, _sub(name, "reduce2"), r1, out // 2, 1, style)
    sep1 = conv(n, _sub(name, "conv3x1"), r2, out, (3, 1), style, pad=(1, 0))
    sep2 = conv(n, _sub(name, "conv1x3"), sep1, out, (1, 3), style, pad=(0, 1))
    return conv(n, _sub(name, "expand"), sep2, out, 1, style)


def channel_std(n: NetBuilder, bottom: str, stds: tuple[float, ...]) -> str:
    """Divide each channel by its standard deviation, in layers every Caffe reads: Caffe's transform has one
    `scale` for all channels, and a Scale layer's per-channel values would be learned blobs that no filler can
    set. So: Slice the channels apart, a Power layer (y = x / std_c) on each, Concat them back. With one channel,
    one Power layer. The mean is subtracted before, by the Data layer's mean_value."""
    if len(stds) == 1:
        return n.layer("Power", bottom, name=f"{bottom}/std", scale=1 / stds[0])
    parts = n.layer("Slice", bottom, name=f"{bottom}/slice", tops=[f"{bottom}/c{i}" for i in range(len(stds))],
                    axis=1)
    for i, (part, std) in enumerate(zip(parts, stds, strict=True)):
        n.layer("Power", part, name=f"{bottom}/std_c{i}", tops=[part], scale=1 / std)
    return n.layer("Concat", *parts, name=f"{bottom}/std", axis=1)
