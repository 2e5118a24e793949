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
    ("caffe_rules",),
    ("netgen", "data_tools", "caffe_build"),
    ("solvers",),
    ("engines",),
    ("train", "evaluation"),
    ("demo",),
    ("compress",),
    ("export",),
    ("cli",),
]
# Imports between packages side by side in one layer, each with its reason (docs/architecture.md lists them too).
ALLOWED_BESIDE = {
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


def against_layers(edges: dict[str, set[str]]) -> list[str]:
    """The imports that go up a layer, or sideways between packages of one layer without a listed reason."""
    upward = []
    for src, targets in edges.items():
        for dst in targets:
            a, b = package_of(src), package_of(dst)
            beside = layer_of(dst) == layer_of(src) and a != b and layer_of(src) > 0
            if (layer_of(dst) > layer_of(src) or beside) and (a, b) not in ALLOWED_BESIDE:
                upward.append(f"{src} -> {dst}")
    return sorted(upward)


def first_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle among modules or among packages, as the trail that closes it; None without one."""
    packages: dict[str, set[str]] = {}
    for src, targets in edges.items():
        packages.setdefault(package_of(src), set()).update(package_of(t) for t in targets
                                                           if package_of(t) != package_of(src))
    for g in (edges, packages):
        state: dict[str, int] = {}

        def visit(node: str, trail: list[str], g=g, state=state) -> list[str] | None:
            state[node] = 1
            for nxt in sorted(g.get(node, ())):
                if state.get(nxt) == 1:
                    return [*trail, node, nxt]
                if nxt not in state and (found := visit(nxt, [*trail, node])):
                    return found
            state[node] = 2
            return None

        for node in sorted(g):
            if node not in state and (found := visit(node, [])):
                return found
    return None


def test_every_module_imports_only_its_layer_and_below():
    upward = against_layers(graph())
    assert not upward, "imports against the layers of docs/architecture.md:\n" + "\n".join(upward)


def test_no_import_cycles_between_modules_or_packages():
    cycle = first_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_checks_catch_a_planted_upward_import_and_cycle():
    """Mutation check: the same graph with one wrong edge added fails each test."""
    edges = graph()
    for src, dst in (("caffe_rules.state", "engines.torchcaffe.net"), ("netgen.builder", "solvers.recipes"),
                     ("netgen.config", "data_tools.manifest"), ("engines.torchcaffe.net", "train.runner")):
        mutated = {k: set(v) for k, v in edges.items()}
        mutated[src].add(dst)
        assert against_layers(mutated) == [f"{src} -> {dst}"]
    mutated = {k: set(v) for k, v in edges.items()}
    mutated["caffe_rules.state"].add("caffe_rules.shapes")  # shapes imports state: a module cycle
    assert first_cycle(mutated) is not None


def third_party(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    found |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    return found


def test_caffe_rules_and_the_solvers_need_no_framework():
    """Caffe's rules (and the solver files written from them) are read by engines, export, compress and evaluation
    without torch: neither package nor anything it imports from the project imports torch."""
    edges = graph()
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py") if not p.name.endswith("_pb2.py")}
    for root in [m for m in modules if package_of(m) in ("caffe_rules", "solvers")]:
        for name in reachable(edges, root):
            assert "torch" not in third_party(modules[name]), f"{root} needs torch through {name}"


def reachable(edges: dict[str, set[str]], root: str) -> set[str]:
    seen, todo = set(), [root]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(edges.get(name, ()))
    return seen


def test_reading_a_sqz_does_not_import_the_compression_pipeline():
    edges = graph()
    for reader in ("compress.sqz", "export.onnx_export", "cli.evaluation"):
        assert "compress.pipeline" not in reachable(edges, reader), f"{reader} imports compress.pipeline"


def test_netgen_knows_nothing_of_data_tools_or_training():
    edges = graph()
    for name in (m for m in edges if package_of(m) == "netgen"):
        above = {package_of(m) for m in reachable(edges, name)} & {"data_tools", "solvers", "engines", "train"}
        assert not above, f"{name} reaches {sorted(above)}"


def test_the_module_list_of_the_architecture_doc_is_the_code():
    from tests.module_listing import block, documented

    assert documented() == block(), "docs/architecture.md's module list is stale: python -m tests.module_listing"


def test_every_module_says_why_it_exists():
    from tests.module_listing import first_sentence

    silent = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
              if not p.name.endswith("_pb2.py") and not first_sentence(p)]
    assert not silent, f"modules without a docstring: {silent}"


LONGEST_MODULE = 350  # lines: past it a module does more than one job (split it by job, not by line count)


def test_no_module_is_over_the_limit():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if not p.name.endswith("_pb2.py")
            if (n := len(p.read_text().splitlines())) > LONGEST_MODULE}
    assert not long, f"modules over {LONGEST_MODULE} lines: {long}"
