"""The layers of docs/architecture.md, enforced: a module may import its own layer and the layers below, never
above, and no import cycle exists between modules. Imports inside functions count (a lazy import is still a
dependency); `if TYPE_CHECKING:` blocks do not."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "squeezecaffe"

# Bottom to top; a module belongs to the first layer whose prefix matches its dotted name (without "squeezecaffe.").
LAYERS: list[tuple[str, ...]] = [
    ("proto", "errors", "fileio", "scoring", "pictures", "options", "__init__"),
    ("netgen", "solvers", "data_tools", "caffe_build"),
    ("engines",),
    ("train", "evaluation"),
    ("demo",),
    ("compress",),
    ("export",),
    ("cli",),
]
# Imports between packages side by side in one layer, each with its reason (docs/architecture.md lists them too).
ALLOWED_BESIDE = {
    ("netgen", "data_tools"): "netgen/config.py sizes a net from a data directory's manifest",
    ("evaluation", "train"): "evaluation reads run directories (train.rundir)",
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" and len(rel.parts) > 1 else rel.parts
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("squeezecaffe"):
            base = node.module.removeprefix("squeezecaffe").lstrip(".")
            found.add(base)
            found.update(f"{base}.{a.name}" if base else a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("squeezecaffe.") for a in node.names if a.name.startswith("squeezecaffe."))
    return {f for f in found if f}


def package_of(name: str) -> str:
    """The box a module sits in: its top-level package (__main__ belongs to the cli box)."""
    top = name.split(".")[0]
    return "cli" if top == "__main__" else top


def layer_of(name: str) -> int:
    top = package_of(name)
    for i, prefixes in enumerate(LAYERS):
        if top in prefixes:
            return i
    raise AssertionError(f"squeezecaffe.{name} is in no layer of LAYERS; place it")


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py") if not p.name.endswith("_pb2.py")}
    edges = {}
    for name, path in modules.items():
        targets = set()
        for imported in imports(path):
            # the longest module name the import refers to (a name inside a module maps to the module)
            parts = imported.split(".")
            for k in range(len(parts), 0, -1):
                candidate = ".".join(parts[:k])
                if candidate in modules and candidate != name:
                    targets.add(candidate)
                    break
        edges[name] = targets
    return edges


def test_every_module_imports_only_its_layer_and_below():
    upward = []
    for src, targets in graph().items():
        for dst in targets:
            a, b = package_of(src), package_of(dst)
            beside = layer_of(dst) == layer_of(src) and a != b and layer_of(src) > 0
            if (layer_of(dst) > layer_of(src) or beside) and (a, b) not in ALLOWED_BESIDE:
                upward.append(f"{src} -> {dst}")
    assert not upward, "imports against the layers of docs/architecture.md:\n" + "\n".join(sorted(upward))


def test_no_import_cycles_between_modules_or_packages():
    edges = graph()
    packages: dict[str, set[str]] = {}
    for src, targets in edges.items():
        packages.setdefault(package_of(src), set()).update(package_of(t) for t in targets
                                                           if package_of(t) != package_of(src))
    for g in (edges, packages):
        state: dict[str, int] = {}

        def visit(node: str, trail: list[str], g=g, state=state) -> None:
            state[node] = 1
            for nxt in sorted(g.get(node, ())):
                assert state.get(nxt) != 1, "import cycle: " + " -> ".join([*trail, node, nxt])
                if nxt not in state:
                    visit(nxt, [*trail, node])
            state[node] = 2

        for node in sorted(g):
            if node not in state:
                visit(node, [])
