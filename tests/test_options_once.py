"""Every setting's default is written once, in its dataclass: the command line's options are built from the fields,
and this test holds every parser to them (and finds a default typed again in a verb)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from squeezecaffe.cli import build_parser
from squeezecaffe.compress.options import CompressOptions
from squeezecaffe.data_tools.convert import ConvertOptions
from squeezecaffe.engines.device import DeviceOptions
from squeezecaffe.evaluation.options import EvalOptions
from squeezecaffe.netgen.variants import FireDesign
from squeezecaffe.solvers.request import GenerationRequest
from squeezecaffe.train.config import TrainConfig
from squeezecaffe.train.guard import GuardOptions
from squeezecaffe.train.plateau import PlateauOptions

CLI = Path(__file__).resolve().parents[1] / "src" / "squeezecaffe" / "cli"

# verb -> the settings dataclasses its options come from, with the prefix of their flags
VERB_SETTINGS: dict[str, list[tuple[type, str]]] = {
    "train": [(TrainConfig, ""), (PlateauOptions, ""), (GuardOptions, "guard-"), (DeviceOptions, "")],
    "lr-find": [(TrainConfig, ""), (DeviceOptions, "")],
    "solve": [(DeviceOptions, "")], "forward": [(DeviceOptions, "")], "time": [(DeviceOptions, "")],
    "gen": [(GenerationRequest, "")], "summary": [(GenerationRequest, "")], "sweep": [(GenerationRequest, "")],
    "build-lmdb": [(ConvertOptions, "")], "import": [(ConvertOptions, "")],
    "compress": [(CompressOptions, "")],
    "eval": [(EvalOptions, ""), (DeviceOptions, "")], "classify": [(EvalOptions, ""), (DeviceOptions, "")],
}
ALL_SETTINGS = {cls for pairs in VERB_SETTINGS.values() for cls, _ in pairs}


def verbs() -> dict:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices


def field_default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def is_option(f: dataclasses.Field) -> bool:
    return f.metadata.get("cli", True) is not False


def test_the_table_names_real_verbs():
    assert set(VERB_SETTINGS) <= set(verbs())


@pytest.mark.parametrize("verb", sorted(VERB_SETTINGS))
def test_a_verbs_options_have_their_dataclass_defaults(verb):
    actions = {a.dest: a for a in verbs()[verb]._actions}
    offered = 0
    for cls, prefix in VERB_SETTINGS[verb]:
        for f in dataclasses.fields(cls):
            action = actions.get(f"{prefix.replace('-', '_')}{f.name}")
            if action is None or not is_option(f):
                continue
            offered += 1
            assert action.default == field_default(f), (
                f"{verb} --{prefix}{f.name}: default {action.default!r}, {cls.__name__} says {field_default(f)!r}")
    assert offered, f"{verb} offers none of {[c.__name__ for c, _ in VERB_SETTINGS[verb]]}"


def test_every_option_field_is_offered_by_some_verb():
    offered: set[tuple[type, str]] = set()
    for verb, pairs in VERB_SETTINGS.items():
        dests = {a.dest for a in verbs()[verb]._actions}
        for cls, prefix in pairs:
            offered |= {(cls, f.name) for f in dataclasses.fields(cls) if f"{prefix.replace('-', '_')}{f.name}" in dests}
    missing = [f"{cls.__name__}.{f.name}" for cls in ALL_SETTINGS for f in dataclasses.fields(cls)
               if is_option(f) and (cls, f.name) not in offered]
    assert not missing, f"option fields no verb offers: {missing}"


def test_the_fire_design_flags_are_unset_unless_given_and_show_v1_0s_values():
    for verb in ("gen", "train", "summary"):
        actions = {a.dest: a for a in verbs()[verb]._actions}
        for f in dataclasses.fields(FireDesign):
            assert actions[f.name].default is None, f"{verb} --{f.name}: a default would change every model"
            assert f"{f.default:g}" in actions[f.name].help


def literal_defaults(path: Path) -> list[tuple[str, int]]:
    """`add_argument("--name", ..., default=<a literal>)` calls: (flag, line)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument" and node.args):
            continue
        flag = node.args[0]
        default = next((k.value for k in node.keywords if k.arg == "default"), None)
        if (isinstance(flag, ast.Constant) and isinstance(flag.value, str) and flag.value.startswith("--")
                and isinstance(default, ast.Constant) and default.value is not None and default.value is not False):
            found.append((flag.value, node.lineno))
    return found


# the verb modules and the settings their verbs are built from (common.py: the helpers all of them share)
FILE_SETTINGS = {
    "train.py": {TrainConfig, PlateauOptions, GuardOptions, DeviceOptions}, "engine.py": {DeviceOptions},
    "netgen.py": {GenerationRequest, FireDesign}, "data.py": {ConvertOptions}, "compress.py": {CompressOptions},
    "evaluation.py": {EvalOptions, DeviceOptions},
    "common.py": ALL_SETTINGS | {FireDesign},
}


def test_no_verb_types_a_settings_default_again():
    again = []
    for file, classes in FILE_SETTINGS.items():
        names = {f.name for cls in classes for f in dataclasses.fields(cls)}
        again += [f"{file}:{line} {flag}" for flag, line in literal_defaults(CLI / file)
                  if flag[2:].replace("-", "_") in names]
    assert not again, f"defaults written again beside their dataclass field: {again}"


def test_the_literal_check_finds_a_planted_default(tmp_path):
    planted = tmp_path / "verb.py"
    planted.write_text('p.add_argument("--seed", type=int, default=0)\np.add_argument("--out", default=None)\n')
    assert literal_defaults(planted) == [("--seed", 1)]
