"""The module list of docs/architecture.md ("Where things are"), generated from the package's docstrings: each
package and module with the first sentence of its docstring. tests/test_architecture.py fails when the document
and the code disagree; `python -m tests.module_listing` rewrites the block."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "squeezecaffe"
DOC = REPO / "docs" / "architecture.md"
BEGIN = "<!-- modules: generated from the docstrings by `python -m tests.module_listing`; checked by a test -->"
END = "<!-- /modules -->"


def first_sentence(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    paragraph = " ".join(doc.split("\n\n")[0].split())
    match = re.match(r"(.+?[.!?])(\s|$)", paragraph)
    return match.group(1) if match else paragraph


def listing() -> str:
    lines = []
    packages = sorted({p.parent for p in PACKAGE.rglob("__init__.py")})
    for package in packages:
        rel = package.relative_to(PACKAGE)
        name = "squeezecaffe" if rel == Path(".") else f"{rel.as_posix()}/"
        lines.append(f"- **{name}** — {first_sentence(package / '__init__.py')}")
        for module in sorted(package.glob("*.py")):
            if module.name == "__init__.py" or module.name.endswith("_pb2.py"):
                continue
            lines.append(f"  - `{module.stem}` — {first_sentence(module)}")
    return "\n".join(lines)


def block() -> str:
    return f"{BEGIN}\n{listing()}\n{END}"


def documented() -> str:
    text = DOC.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[start:end]


def main() -> int:
    text = DOC.read_text()
    DOC.write_text(text.replace(documented(), block()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
