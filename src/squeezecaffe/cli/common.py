"""What several verb modules share: the `--solver-set KEY=VALUE` parser and the model-name-or-prototxt rule.

Kept apart from the package's __init__ so the verb modules (engine, netgen, ...) never import the module that
registers them.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from pathlib import Path

from squeezecaffe.errors import UserError


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    """`--solver-set` items (KEY=VALUE) as a dict; a malformed one is a one-line error."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--solver-set '{item}': expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def is_model_name(target: str) -> bool:
    """A verb's target is a registered model unless it looks like a prototxt path (an unknown name then
    fails with the list of models, not with 'file not found')."""
    from squeezecaffe.netgen.registry import MODELS

    return target in MODELS or not (target.endswith(".prototxt") or Path(target).exists())


def add_variant_options(p: argparse.ArgumentParser) -> None:
    """The Fire design space and the ResNet family as options; they extend the model name (netgen/variants.py)."""
    from squeezecaffe.netgen.variants import FireDesign

    g = p.add_argument_group("variants (Fire design space; ResNet family)")
    for f in dataclasses.fields(FireDesign):  # unset unless given: the model's own design stays otherwise
        g.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default),
                       help=f"Fire design space: {f.metadata['help']} (v1.0: {f.default:g})")
    g.add_argument("--fire", action="append", default=[], metavar="fireN=S,E1,E3",
                   help="one Fire module's squeeze, expand1x1 and expand3x3 filters (repeatable)")
    g.add_argument("--blocks", help="ResNet: basic blocks per stage, e.g. 5-4-3 or 1-1-1-1")
    g.add_argument("--widths", help="ResNet: stage widths, e.g. 64,128,256 (default: doubling from the first)")
    g.add_argument("--bottleneck", type=float, nargs="?", const=0.5,
                   help="ResNet: factorize every 3x3 through a 1x1 reduction to this fraction of the width (0.5)")


def variant_target(model: str, args: argparse.Namespace) -> str:
    """`model` extended by the variant options given (the same string `model_spec` reads)."""
    from squeezecaffe.netgen.variants import FireDesign, variant_name

    design = {f.name: value for f in dataclasses.fields(FireDesign) if (value := getattr(args, f.name, None)) is not None}
    fires = {}
    for item in getattr(args, "fire", None) or []:
        key, sep, value = item.partition("=")
        try:
            widths = tuple(int(v) for v in value.replace("-", ",").split(","))
        except ValueError:
            widths = ()
        if not sep or len(widths) != 3:
            raise UserError(f"--fire '{item}': expected fireN=S,E1,E3, e.g. fire4=32,96,160")
        fires[key] = widths

    def ints(option: str) -> tuple[int, ...] | None:
        text = getattr(args, option, None)
        if text is None:
            return None
        try:
            return tuple(int(v) for v in text.replace(",", "-").split("-"))
        except ValueError:
            raise UserError(f"--{option} '{text}': expected integers, e.g. 5-4-3") from None

    if not (design or fires or any(getattr(args, k, None) is not None for k in ("blocks", "widths", "bottleneck"))):
        return model
    return variant_name(model, design=design or None, fires=fires or None, blocks=ints("blocks"),
                        widths=ints("widths"), bottleneck=getattr(args, "bottleneck", None))


def _field_type(hint) -> tuple[type, bool]:
    """(the scalar type, whether the field is a tuple of them) of `int`, `int | None`, `tuple[float, ...]`."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        return args[0], True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return args[0], False
    return hint, False


def _list_of(kind: type):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}': expected numbers separated by commas, e.g. 5,2") from None
    return parse


def add_dataclass_options(p: argparse.ArgumentParser, cls: type, *, prefix: str = "",
                          only: tuple[str, ...] | None = None) -> None:
    """One `--[prefix]name` option per field of the options dataclass `cls` (fields whose metadata says
    `cli: False` are left out; `only` picks fields by name, for a verb that takes a few of them): type and default
    from the field, help (and `choices`, `metavar`) from its metadata; a bool is a flag. The dataclass stays the
    one place a default is written."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli", True) is False or (only is not None and f.name not in only):
            continue
        kind, many = _field_type(hints[f.name])
        default = f.default
        flag, dest = f"--{prefix}{f.name.replace('_', '-')}", f"{prefix.replace('-', '_')}{f.name}"
        text = f.metadata.get("help", "")
        if kind is bool:
            p.add_argument(flag, dest=dest, default=default, help=text,
                           action=argparse.BooleanOptionalAction if default else "store_true")
            continue
        if default is not None:
            text += f" (default: {','.join(f'{v:g}' for v in default) if many else default})"
        p.add_argument(flag, dest=dest, type=_list_of(kind) if many else kind, default=default, help=text,
                       **{k: f.metadata[k] for k in ("choices", "metavar") if k in f.metadata})


def add_schedule_choices(p: argparse.ArgumentParser) -> None:
    """`--base-lr` and `--freeze`: what `train` and `gen` write into the solver / train_val they generate."""
    p.add_argument("--base-lr", help="a rate, or auto: run the LR range test (lr-find) on --data first and use its "
                                     "suggestion")
    p.add_argument("--freeze", action="append", default=[], metavar="LAYERS",
                   help="layers (names, fnmatch patterns, or modules like fire2) trained with lr_mult 0; "
                        "comma-separated, repeatable")


def freeze_list(args: argparse.Namespace) -> list[str]:
    """The `--freeze` items, comma-separated lists split."""
    return [item for text in args.freeze for item in text.split(",") if item]


def dataclass_values(args: argparse.Namespace, cls: type, *, prefix: str = "") -> dict:
    """The values of the options `add_dataclass_options` made, by field name."""
    return {f.name: getattr(args, f"{prefix.replace('-', '_')}{f.name}") for f in dataclasses.fields(cls)
            if f.metadata.get("cli", True) is not False}


def add_device_options(p: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """The device group (engines/device.py), all of it or the fields in `only`; shared by every verb that runs a
    net with the torch engine."""
    from squeezecaffe.engines.device import DeviceOptions

    add_dataclass_options(p.add_argument_group("device"), DeviceOptions, only=only)


def device_options(args: argparse.Namespace):
    """The parsed device group as a DeviceOptions."""
    from squeezecaffe.engines.device import DeviceOptions

    return DeviceOptions(**dataclass_values(args, DeviceOptions))
