"""Settings written once: a dataclass field that is also a command-line option carries its help beside its default.

The verbs build their options from such fields (cli/common.add_dataclass_options) and config files are read back
into the same dataclasses (`from_json_object`), so a default lives in one place. Imports nothing of the package
but its errors: every layer may use it.
"""

from __future__ import annotations

import os
import types
from dataclasses import MISSING, field, fields, is_dataclass

from squeezecaffe.errors import UserError


def option(default, text: str, **cli):
    """A field that is also an option: its help (and argparse's `choices`/`metavar`) next to its default."""
    return field(default=default, metadata={"help": text, **cli})


# a field the verbs fill another way (a positional, a repeated option, an option group) or never offer
NOT_AN_OPTION = types.MappingProxyType({"cli": False})


def from_json_object(cls: type, raw: object, path: str | os.PathLike, where: str = ""):
    """`raw` (read from a JSON file at `path`) as a `cls` dataclass, naming an unknown key, a wrong type or a value
    the class refuses in one line; a dict for a dataclass field is read the same way, one level down."""
    if not isinstance(raw, dict):
        raise UserError(f"{path}: {where.rstrip('.') or 'the file'} is {repr(raw)[:80]}, expected an object")
    known = {f.name: f for f in fields(cls)}
    values = {}
    for key, value in raw.items():
        name = f"{where}{key}"
        if key not in known:
            raise UserError(f"{path}: unknown key {repr(name)[:80]} (known: {', '.join(known)})")
        f = known[key]
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if is_dataclass(default):
            value = from_json_object(type(default), value, path, f"{name}.")
        elif isinstance(default, tuple) and isinstance(value, list):  # JSON has no tuples
            value = tuple(value)
        elif default is not None and value is not None:
            expected = type(default)
            number = expected is float and isinstance(value, int) and not isinstance(value, bool)
            if not number and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
                raise UserError(f"{path}: {name} is {repr(value)[:80]}, expected {expected.__name__}")
        values[key] = value
    try:
        return cls(**values)
    except (TypeError, ValueError, UserError) as exc:  # a value __post_init__ cannot take
        raise UserError(f"{path}: {where.rstrip('.') or 'the file'}: {exc}") from None
