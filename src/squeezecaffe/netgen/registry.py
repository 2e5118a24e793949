"""Every model the project knows, as one row of data each; `builder.py` turns any row into a net.

Adding a model = adding a row. The tests enumerate `MODELS`, so a new row is generated,
summarized and load-checked with no test edited. Published figures sit in the row so the tests
can hold our generated nets to them (docs/architecture.md, "Readings", gives their sources).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from squeezecaffe.errors import UserError

# ------------------------------------------------------------------ body tokens


@dataclass(frozen=True)
class Fire:
    squeeze: int  # s1x1: squeeze 1x1 filters
    expand1x1: int  # e1x1: filters of the 1x1 expand branch
    expand3x3: int  # e3x3: filters of the 3x3 expand branch (the released nets tie the two: e1x1 = e3x3)
    bypass: Literal["identity", "conv"] | None = None  # TypeB / TypeA bypass, or none

    @property
    def out(self) -> int:
        """Output channels: the two expand branches concatenated."""
        return self.expand1x1 + self.expand3x3


@dataclass(frozen=True)
class MaxPool:
    kernel: int = 3
    stride: int = 2


@dataclass(frozen=True)
class BasicBlock:
    width: int  # output channels of both 3x3 convs
    stride: int = 1  # stride of the first conv (and of the 1x1 shortcut)
    bottleneck: int | None = None  # factorized: each 3x3 reads a 1x1 reduction to this many channels first


@dataclass(frozen=True)
class SqueezeNext:
    out: int  # output channels C (inner widths C, C/2, C, C)


BodyToken = Fire | MaxPool | BasicBlock | SqueezeNext


def F(s: int, e: int) -> Fire:
    return Fire(s, e, e)


def A(s: int, e: int) -> Fire:
    return Fire(s, e, e, "conv")


def B(s: int, e: int) -> Fire:
    return Fire(s, e, e, "identity")


MP = MaxPool()


def resnet_body(blocks: tuple[int, ...], widths: tuple[int, ...],
                bottleneck: float | None = None) -> tuple[BasicBlock, ...]:
    """Stages of basic blocks; every stage after the first halves the resolution in its first block.
    `bottleneck` (a fraction of the stage width) factorizes every 3x3 through a 1x1 reduction."""
    return tuple(
        BasicBlock(width, 2 if stage and i == 0 else 1,
                   max(1, int(width * bottleneck + 0.5)) if bottleneck else None)
        for stage, (count, width) in enumerate(zip(blocks, widths, strict=True))
        for i in range(count)
    )


# ------------------------------------------------------------------ stem / head / data


@dataclass(frozen=True)
class Stem:
    num_output: int
    kernel: int
    stride: int = 1
    pad: int = 0
    pool: bool = True  # 3x3/2 max pool after conv1


@dataclass(frozen=True)
class Head:
    """`conv`: [dropout] conv10 1x1 (classes) -> ReLU -> global AVE pool (SqueezeNet).
    `fc`: [conv10 1x1 (`conv` filters) -> ReLU] -> global AVE pool -> ([dropout] InnerProduct(h) -> ReLU)* ->
    [dropout] InnerProduct(classes); `dropouts` gives the ratio before each InnerProduct (0: none)."""

    kind: Literal["conv", "fc"]
    dropout: float | None = None  # conv head: before conv10
    hidden: tuple[int, ...] = ()
    conv10_filler: tuple[tuple[str, object], ...] | None = None  # conv10's weight filler, when not the net's
    conv: int | None = None  # fc head: a narrowed 1x1 conv10 before the pooling
    dropouts: tuple[float, ...] = ()  # fc head: before fc1, fc2, ..., classifier


@dataclass(frozen=True)
class DatasetDefaults:
    """What a model is trained on unless the command line or a data directory says otherwise."""

    key: str  # folder name under data/ in the committed prototxt
    input_size: tuple[int, int]  # network input H, W
    classes: int
    train_size: int
    val_size: int
    mean_value: tuple[float, ...]  # BGR
    crop: bool  # random crop (TRAIN) / centre crop (TEST) to input_size from larger images
    batch_size: int
    test_batch_size: int
    iter_size: int
    epochs: int
    base_lr: float
    weight_decay: float
    power: float = 1.0
    momentum: float = 0.9
    mirror: bool = True


TINY_IMAGENET = DatasetDefaults(
    key="tiny-imagenet-200", input_size=(64, 64), classes=200, train_size=100_000, val_size=10_000,
    mean_value=(104.0, 117.0, 123.0), crop=False, batch_size=128, test_batch_size=100, iter_size=1,
    epochs=30, base_lr=0.04, weight_decay=5e-4)
# SqueezeNet's released solver: batch 32 x iter_size 16, base_lr 0.04, poly power 1, wd 2e-4, 170k iters.
IMAGENET = DatasetDefaults(
    key="imagenet", input_size=(227, 227), classes=1000, train_size=1_281_167, val_size=50_000,
    mean_value=(104.0, 117.0, 123.0), crop=True, batch_size=32, test_batch_size=25, iter_size=16,
    epochs=68, base_lr=0.04, weight_decay=2e-4)
CIFAR10 = DatasetDefaults(
    key="cifar10", input_size=(32, 32), classes=10, train_size=50_000, val_size=10_000,
    mean_value=(113.9, 123.0, 125.3), crop=False, batch_size=128, test_batch_size=100, iter_size=1,
    epochs=150, base_lr=0.1, weight_decay=5e-4)


# ------------------------------------------------------------------ published figures

SOURCES = {
    "squeezenet": "Iandola et al., SqueezeNet (2016), Table 2 and Section 5",
    "tiny": "the Tiny-ImageNet SqueezeNet-with-bypass study, Table 1",
    "cifar": "seed 002, the CIFAR-10 ResNet study",
    "seed001": "seed 001, CIFAR-10 Sq-1 and Fire-Next",
}


@dataclass(frozen=True)
class Published:
    """The figures a paper states for a net, as data: `squeezecaffe list` prints them and the tests hold the
    generated nets to the counts (docs/architecture.md, "Readings", says how each was read)."""

    source: str  # a key of SOURCES
    # The parameter count and its convention: "weights" = conv/fc kernels only (the Tiny-ImageNet paper's
    # Table 1); "trainable" = every learned blob (biases, Scale gamma/beta included).
    params: int | None = None
    params_convention: Literal["weights", "trainable"] = "weights"
    params_exact: bool = True  # False: the source gives an approximate figure ("~797K"); we match to 2%
    params_without_bypass: int | None = None
    depth: int | None = None  # conv layers on the main path
    top1: float | None = None  # accuracy as a fraction, on `split`
    top5: float | None = None
    split: Literal["val", "test"] = "val"
    caffemodel_mb: float | None = None  # the stored model's size as the source states it

    def describe(self) -> str:
        """One line for `list`: the parameter count, accuracy and model size the source reports."""
        parts = []
        if self.params is not None:
            parts.append(f"{'' if self.params_exact else '~'}{self.params:,} {self.params_convention}")
        if self.top1 is not None:
            parts.append(f"{self.split} top-1 {100 * self.top1:.4g}%")
        if self.top5 is not None:
            parts.append(f"top-5 {100 * self.top5:.4g}%")
        if self.caffemodel_mb is not None:
            parts.append(f"caffemodel {self.caffemodel_mb:g} MB")
        return ", ".join(parts)


# ------------------------------------------------------------------ the row


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    data: DatasetDefaults
    stem: Stem
    body: tuple[BodyToken, ...]
    head: Head
    batchnorm: bool  # BatchNorm + Scale after every conv, convs without bias
    weight_filler: str = "xavier"
    published: Published | None = None  # what the source states for this net (None: a net of our own)
    reading: str = ""  # where the source is vague, what we built and why
    tags: tuple[str, ...] = field(default=())


_V1_0_FIRES = (F(16, 64), F(16, 64), F(32, 128), MP, F(32, 128), F(48, 192), F(48, 192), F(64, 256), MP, F(64, 256))
_V1_1_FIRES = (F(16, 64), F(16, 64), MP, F(32, 128), F(32, 128), MP, F(48, 192), F(48, 192), F(64, 256), F(64, 256))
_TINY_STEM = Stem(96, 3, 1, pad=1)
_TINY_HEAD = Head("conv")
_IMAGENET_HEAD = Head("conv", dropout=0.5, conv10_filler=(("type", "gaussian"), ("mean", 0.0), ("std", 0.01)))

_ROWS: tuple[ModelSpec, ...] = (
    # --- ImageNet SqueezeNet, as released (biases, no BatchNorm) --------------------------------
    ModelSpec(
        "squeezenet_v1_0", "SqueezeNet v1.0 (ImageNet, 227x227)", IMAGENET, Stem(96, 7, 2), _V1_0_FIRES,
        _IMAGENET_HEAD, batchnorm=False, published=Published(
            "squeezenet", params=1_248_424, params_convention="trainable", top1=0.575, top5=0.803)),
    ModelSpec(
        "squeezenet_v1_1", "SqueezeNet v1.1 (ImageNet, 227x227; 2.4x less computation)", IMAGENET,
        Stem(64, 3, 2), _V1_1_FIRES, _IMAGENET_HEAD, batchnorm=False, published=Published(
        "squeezenet", params=1_235_496, params_convention="trainable")),
    ModelSpec(
        "simple_bypass_v1_0", "SqueezeNet v1.0 + identity bypass around fire3/5/7/9", IMAGENET,
        Stem(96, 7, 2),
        (F(16, 64), B(16, 64), F(32, 128), MP, B(32, 128), F(48, 192), B(48, 192), F(64, 256), MP, B(64, 256)),
        _IMAGENET_HEAD, batchnorm=False, published=Published(
            "squeezenet", params=1_248_424, params_convention="trainable", top1=0.604, top5=0.825)),
    ModelSpec(
        "complex_bypass_v1_0", "SqueezeNet v1.0 + identity bypass (fire3/5/7/9) + 1x1-conv bypass (fire2/4/6/8)",
        IMAGENET, Stem(96, 7, 2),
        (A(16, 64), B(16, 64), A(32, 128), MP, B(32, 128), A(48, 192), B(48, 192), A(64, 256), MP, B(64, 256)),
        _IMAGENET_HEAD, batchnorm=False, published=Published(
            "squeezenet", params=1_589_672, params_convention="trainable", top1=0.588, top5=0.820)),
    # --- Tiny ImageNet (64x64, BatchNorm + Scale after every conv) ------------------------------
    ModelSpec(
        "original8", "8-Fire SqueezeNet for Tiny ImageNet, no bypass", TINY_IMAGENET, _TINY_STEM,
        (F(16, 64), F(16, 64), F(32, 128), MP, F(32, 128), F(48, 192), F(48, 192), F(64, 256), MP, F(64, 256)),
        _TINY_HEAD, batchnorm=True, weight_filler="msra", published=Published(
            "tiny", params=823_328, params_without_bypass=823_328, depth=18, top1=0.41,
            caffemodel_mb=3.2)),
    ModelSpec(
        "partialbypass8", "original8 + identity bypass around fire3/5/7/9", TINY_IMAGENET, _TINY_STEM,
        (F(16, 64), B(16, 64), F(32, 128), MP, B(32, 128), F(48, 192), B(48, 192), F(64, 256), MP, B(64, 256)),
        _TINY_HEAD, batchnorm=True, weight_filler="msra", published=Published(
            "tiny", params=823_328, params_without_bypass=823_328, depth=18, top1=0.44,
            caffemodel_mb=4.8)),
    ModelSpec(
        "fullbypass8", "8 Fires, alternating TypeA (1x1-conv bypass) and TypeB (identity bypass)",
        TINY_IMAGENET, _TINY_STEM,
        (A(16, 64), B(16, 64), A(32, 128), MP, B(32, 128), A(48, 192), B(48, 192), A(64, 256), MP, B(64, 256)),
        _TINY_HEAD, batchnorm=True, weight_filler="msra", published=Published(
            "tiny", params=1_163_296, params_without_bypass=823_328, depth=18, top1=0.54, top5=0.77,
            caffemodel_mb=6.4)),
    ModelSpec(
        "fullbypass12", "12 Fires, TypeA/TypeB pairs, dropout 0.5 before conv10", TINY_IMAGENET, _TINY_STEM,
        (A(16, 64), B(16, 64), A(16, 64), B(16, 64), A(32, 128), MP, B(32, 128), A(48, 192), B(48, 192),
         A(48, 192), B(48, 192), MP, A(64, 256), B(64, 256)),
        Head("conv", dropout=0.5), batchnorm=True, weight_filler="msra", published=Published(
            "tiny", params=1_572_896, depth=26, top1=0.58, top5=0.83),
        reading="the paper gives ~1.6M and 'two more TypeA-TypeB sets, with a maxpool before the last TypeA'; "
                "this sequence is our documented reading (docs/architecture.md, Readings)"),
    # --- CIFAR-10 ----------------------------------------------------------------------------
    *(
        ModelSpec(
            f"cifar_resnet_{tag}", f"CIFAR-10 ResNet, basic blocks {'-'.join(map(str, blocks))}, widths "
            f"{'/'.join(map(str, widths))}", CIFAR10, Stem(64, 3, 1, pad=1, pool=False),
            resnet_body(blocks, widths), Head("fc"), batchnorm=True, weight_filler="msra",
            published=Published("cifar", params=params, params_convention="trainable", top1=top1, split="test"))
        for tag, blocks, widths, params, top1 in (
            ("18", (2, 2, 2, 2), (64, 128, 256, 512), 11_173_962, None),
            ("2231", (2, 2, 3, 1), (64, 128, 256, 512), 7_633_994, None),
            ("2221", (2, 2, 2, 1), (64, 128, 256, 512), 6_453_322, None),
            ("2211", (2, 2, 1, 1), (64, 128, 256, 512), 5_272_650, None),
            ("2111", (2, 1, 1, 1), (64, 128, 256, 512), 4_977_226, None),
            ("1111", (1, 1, 1, 1), (64, 128, 256, 512), 4_903_242, None),
            ("543", (5, 4, 3), (64, 128, 256), 4_771_146, 0.9311),  # after 150 epochs
        )
    ),
    # Seed 001's Sq-1: SqueezeNet v1.1's features, the last conv narrowed, then two linear layers; base: mid layer 64,
    # dropout 0.3 and 0.1; final: mid layer 32, dropout 0.1 and 0.1. The narrowed width is not stated: 128 filters
    # give the published ~797K for the base head (797,066), and the final head then has 792,618.
    *(
        ModelSpec(
            name, f"CIFAR-10 Sq-1 ({which} head): SqueezeNet v1.1 features, conv10 narrowed to 128, global pool, "
                  f"InnerProduct {mid} + ReLU, InnerProduct (classes); dropout {drops[0]:g}/{drops[1]:g}",
            CIFAR10, Stem(64, 3, 2), _V1_1_FIRES, Head("fc", hidden=(mid,), conv=128, dropouts=drops),
            batchnorm=False,
            published=Published("seed001", params=797_000, params_convention="trainable", params_exact=False)
            if which == "base" else None,
            reading="the seed gives the head's mid width and dropouts, not the narrowed conv's width: 128 filters "
                    "give its ~797K (797,066) with the base head; dropout 1 sits after the pooling, dropout 2 "
                    "after the mid layer")
        for name, which, mid, drops in (("sq1", "base", 64, (0.3, 0.1)), ("sq1_final", "final", 32, (0.1, 0.1)))
    ),
    ModelSpec(
        "firenext", "CIFAR-10 SqueezeNet v1.1 with fire9 replaced by a SqueezeNext block (no residual add)",
        CIFAR10, Stem(64, 3, 2), (*_V1_1_FIRES[:-1], SqueezeNext(128)), Head("fc"), batchnorm=False,
        published=Published("seed001", params=691_000, params_convention="trainable", params_exact=False),
        reading="reported as ~691K with block output 128; inner widths C, C/2, C, C (1x1, 1x1, 3x1, 1x3, "
                "1x1) and a single InnerProduct classifier give 691,018"),
)

MODELS: dict[str, ModelSpec] = {row.name: row for row in _ROWS}


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise UserError(f"unknown model '{name}'; known models: {', '.join(MODELS)}") from None


def narrowed(spec: ModelSpec, divisor: int = 4) -> ModelSpec:
    """The same graph with every width divided by `divisor` (layers, names, bypasses and head unchanged).

    For fast tests of structure: a narrow fullbypass8 exercises every kind of layer and connection the full one
    has at a sixteenth of the arithmetic. Widths stay proportional, so identity bypasses still see in == out.
    Published figures do not carry over.
    """

    def narrow(width: int) -> int:
        return max(2, width // divisor)

    def token(t: BodyToken) -> BodyToken:
        if isinstance(t, Fire):
            return replace(t, squeeze=narrow(t.squeeze), expand1x1=narrow(t.expand1x1), expand3x3=narrow(t.expand3x3))
        if isinstance(t, BasicBlock):
            return replace(t, width=narrow(t.width))
        if isinstance(t, SqueezeNext):
            return replace(t, out=narrow(t.out))
        return t

    return replace(spec, name=f"{spec.name}_narrow{divisor}", description=f"{spec.description}, widths / {divisor}",
                   stem=replace(spec.stem, num_output=narrow(spec.stem.num_output)),
                   body=tuple(token(t) for t in spec.body),
                   head=replace(spec.head, hidden=tuple(narrow(h) for h in spec.head.hidden),
                                conv=narrow(spec.head.conv) if spec.head.conv else None),
                   published=None)
