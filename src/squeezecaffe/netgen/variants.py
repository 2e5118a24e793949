"""Models off the registry's rows: the Fire design space and the CIFAR ResNet family, named in one string.

A variant is a registry row plus changes, written after its name: `squeezenet_v1_0:sr=0.25:pct3x3=0.75`,
`squeezenet_v1_0:fire4=32-96-160`, `cifar_resnet:blocks=5-4-3:widths=64-128-256:bottleneck=0.5`. The string
is the model's name everywhere a model name goes (gen, summary, train, config.json, the generated nets), so a
variant trains, resumes and evaluates like a row, and the name alone rebuilds it.

The Fire design space is the SqueezeNet paper's (Section 5): Fire module i (0-based, in network order) has
e_i = base_e + incr_e * floor(i / freq) expand filters, of which e3x3 = pct3x3 * e_i are 3x3 and the rest 1x1,
and s_i = SR * e_i squeeze filters. Fractions are rounded half up and kept within [1, e_i - 1] (3x3) and
>= 1 (squeeze), so the paper's extremes (pct3x3 1% and 99%) still have both branches. The defaults (128, 128,
2, 0.5, 0.125) give SqueezeNet v1.0's Fires exactly; a row whose Fires do not follow the formula at those
defaults (fullbypass12) takes per-module overrides only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from squeezecaffe.errors import UserError
from squeezecaffe.netgen.registry import BasicBlock, Fire, ModelSpec, get_model, resnet_body
from squeezecaffe.options import option

# A family name a user types, and the row it starts from (the seed study's best three-stage net).
FAMILIES = {"cifar_resnet": "cifar_resnet_543"}


@dataclass(frozen=True)
class FireDesign:
    """The five metaparameters of the Fire design space; defaults are SqueezeNet v1.0's."""

    base_e: int = option(128, "expand filters of the first Fire")
    incr_e: int = option(128, "expand filters added every FREQ Fires")
    freq: int = option(2, "Fires per width step")
    pct3x3: float = option(0.5, "share of 3x3 expand filters")
    sr: float = option(0.125, "squeeze ratio s/e")

    def __post_init__(self) -> None:
        if self.base_e < 2 or self.incr_e < 0 or self.freq < 1:
            raise UserError(f"Fire design: base_e >= 2, incr_e >= 0 and freq >= 1 required, got {self}")
        if not 0 < self.pct3x3 < 1 or not 0 < self.sr <= 1:
            raise UserError(f"Fire design: pct3x3 in (0, 1) and SR in (0, 1] required, got pct3x3 {self.pct3x3}, "
                            f"SR {self.sr}")

    def fire(self, index: int) -> tuple[int, int, int]:
        """(s1x1, e1x1, e3x3) of Fire module `index` (0-based)."""
        e = self.base_e + self.incr_e * (index // self.freq)
        e3 = min(e - 1, max(1, _half_up(self.pct3x3 * e)))
        return max(1, _half_up(self.sr * e)), e - e3, e3


def _half_up(x: float) -> int:
    return math.floor(x + 0.5)


@dataclass(frozen=True)
class Variation:
    """What a variant changes; None/empty = the row's own."""

    design: dict[str, float] | None = None  # FireDesign fields given by the user
    fires: tuple[tuple[str, tuple[int, int, int]], ...] = ()  # fireN -> (s1x1, e1x1, e3x3)
    blocks: tuple[int, ...] | None = None
    widths: tuple[int, ...] | None = None
    bottleneck: float | None = None


_DESIGN_KEYS = {f.name: type(f.default) for f in fields(FireDesign)}  # the design options and their types


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split("-"))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise UserError(f"{what}: expected positive integers joined by '-', got '{text}'")
    return values


def parse_variation(text: str, where: str) -> Variation:
    """'sr=0.25:fire4=32-96-160' (the part of a model name after its first ':') -> Variation."""
    design: dict[str, float] = {}
    fires: dict[str, tuple[int, int, int]] = {}
    blocks = widths = bottleneck = None
    for item in filter(None, text.split(":")):
        key, _, value = item.partition("=")
        if key in _DESIGN_KEYS:
            try:
                design[key] = _DESIGN_KEYS[key](value)
            except ValueError:
                raise UserError(f"{where}: {key}={value!r} is not a number") from None
        elif key.startswith("fire") and key[4:].isdigit():
            widths3 = _ints(value, f"{where}: {key}")
            if len(widths3) != 3:
                raise UserError(f"{where}: {key} takes s1x1-e1x1-e3x3, got '{value}'")
            fires[key] = widths3  # type: ignore[assignment]
        elif key == "blocks":
            blocks = _ints(value, f"{where}: blocks")
        elif key == "widths":
            widths = _ints(value, f"{where}: widths")
        elif key == "bottleneck":
            try:
                bottleneck = float(value or 0.5)
            except ValueError:
                raise UserError(f"{where}: bottleneck={value!r} is not a number") from None
            if not 0 < bottleneck <= 1:
                raise UserError(f"{where}: bottleneck is a fraction of the stage width in (0, 1], got {value}")
        else:
            raise UserError(f"{where}: unknown change '{item}' (known: {', '.join(_DESIGN_KEYS)}, fireN=S-E1-E3, "
                            "blocks=N-N-N, widths=W-W-W, bottleneck[=R])")
    return Variation(design or None, tuple(sorted(fires.items())), blocks, widths, bottleneck)


def variant_name(base: str, *, design: dict[str, float] | None = None,
                 fires: dict[str, tuple[int, int, int]] | None = None, blocks: tuple[int, ...] | None = None,
                 widths: tuple[int, ...] | None = None, bottleneck: float | None = None) -> str:
    """The canonical name of a variant (what `model_spec` parses back)."""
    parts = [base]
    parts += [f"{k}={design[k]:g}" for k in _DESIGN_KEYS if design and k in design]
    parts += [f"{k}={'-'.join(map(str, v))}" for k, v in sorted((fires or {}).items())]
    if blocks:
        parts.append("blocks=" + "-".join(map(str, blocks)))
    if widths:
        parts.append("widths=" + "-".join(map(str, widths)))
    if bottleneck:
        parts.append(f"bottleneck={bottleneck:g}")
    return ":".join(parts)


def file_stem(name: str) -> str:
    """A model name fit for file and directory names (a variant's ':' becomes '+')."""
    return name.replace(":", "+")


def model_spec(name: str) -> ModelSpec:
    """A registry row, a family name, or a variant string -> the ModelSpec to build."""
    base, _, changes = name.partition(":")
    spec = get_model(FAMILIES.get(base, base))
    if not changes:
        return spec
    return replace(_apply(spec, parse_variation(changes, name)), name=name,
                   published=None,
                   description=f"{spec.description}; variant {changes}")


def _apply(spec: ModelSpec, v: Variation) -> ModelSpec:
    body = spec.body
    if v.design is not None or v.fires:
        body = _fire_body(spec, v)
    stem = spec.stem
    if v.blocks is not None or v.widths is not None or v.bottleneck is not None:
        body = _resnet_body(spec, v)
        stem = replace(stem, num_output=body[0].width)  # the stem is as wide as the first stage, as in the rows
    return replace(spec, body=body, stem=stem)


def _fire_body(spec: ModelSpec, v: Variation) -> tuple:
    fires = [t for t in spec.body if isinstance(t, Fire)]
    if not fires:
        raise UserError(f"model {spec.name} has no Fire modules; the Fire design space does not apply")
    widths = [(f.squeeze, f.expand1x1, f.expand3x3) for f in fires]
    if v.design is not None:
        reference = FireDesign()
        if widths != [reference.fire(i) for i in range(len(fires))]:
            raise UserError(f"model {spec.name}: its Fire widths do not follow the design space's formula at "
                            "SqueezeNet v1.0's metaparameters, so base_e/incr_e/freq/pct3x3/sr cannot be varied; "
                            "change modules with fireN=S-E1-E3")
        design = FireDesign(**v.design)  # type: ignore[arg-type]
        widths = [design.fire(i) for i in range(len(fires))]
    names = {f"fire{i + 2}": i for i in range(len(fires))}  # Fire modules are numbered from fire2
    for key, value in v.fires:
        if key not in names:
            raise UserError(f"model {spec.name} has no {key} (its Fire modules: {', '.join(names)})")
        widths[names[key]] = value
    new = iter(Fire(s, e1, e3, f.bypass) for (s, e1, e3), f in zip(widths, fires, strict=True))
    return tuple(next(new) if isinstance(t, Fire) else t for t in spec.body)


def _resnet_body(spec: ModelSpec, v: Variation) -> tuple:
    blocks_now = [t for t in spec.body if isinstance(t, BasicBlock)]
    if not blocks_now or len(blocks_now) != len(spec.body):
        raise UserError(f"model {spec.name} is not a ResNet of basic blocks; blocks/widths/bottleneck do not apply")
    stages: list[tuple[int, int]] = []  # (count, width) of the row's stages
    for block in blocks_now:
        if stages and block.width == stages[-1][1] and block.stride == 1:
            stages[-1] = (stages[-1][0] + 1, block.width)
        else:
            stages.append((1, block.width))
    blocks = v.blocks or tuple(c for c, _ in stages)
    if v.widths is not None:
        widths = v.widths
    elif v.blocks is not None:
        widths = tuple(stages[0][1] * 2 ** i for i in range(len(blocks)))  # doubling per stage, as the rows
    else:
        widths = tuple(w for _, w in stages)
    if len(widths) != len(blocks):
        raise UserError(f"model {spec.name}: {len(blocks)} stages of blocks but {len(widths)} widths")
    return resnet_body(blocks, widths, v.bottleneck)
