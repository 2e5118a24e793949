"""What several verb modules share: the `--solver-set KEY=VALUE` parser and the model-name-or-prototxt rule.

Kept apart from the package's __init__ so the verb modules (engine, netgen, ...) never import the module that
registers them.
"""

from __future__ import annotations

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
