"""Settings written once: a dataclass field that is also a command-line option carries its help beside its default.

The verbs build their options from such fields (cli/common.add_dataclass_options) and config files are read back
into the same dataclasses, so a default lives in one place. Imports nothing of the package: every layer may use it.
"""

from __future__ import annotations

import types
from dataclasses import field


def option(default, text: str, **cli):
    """A field that is also an option: its help (and argparse's `choices`/`metavar`) next to its default."""
    return field(default=default, metadata={"help": text, **cli})


# a field the verbs fill another way (a positional, a repeated option, an option group) or never offer
NOT_AN_OPTION = types.MappingProxyType({"cli": False})
