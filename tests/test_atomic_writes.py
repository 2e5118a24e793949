"""One rule for final artifacts: they are written through squeezecaffe.fileio (temp file, fsync, rename), so a
reader never finds half a file where a complete one is expected. This scans the package's source for every other
way to write a file and fails on any not listed below with its reason."""

from __future__ import annotations

import ast
from pathlib import Path

import squeezecaffe

PACKAGE = Path(squeezecaffe.__file__).resolve().parent
WRITERS = {"write_text", "write_bytes", "savefig", "copyfile", "copy", "copy2", "copytree", "save", "savez",
           "savez_compressed", "tofile", "dump"}

# (file relative to the package, a piece of the call's source): why this write is not a final artifact's
ALLOWED = {
    ("fileio.py", "os.fdopen(fd, \"wb\")"): "the atomic writer itself (a temp file, renamed into place)",
    ("fileio.py", "fig.savefig(buf"): "renders into memory; atomic_write_bytes writes it",
    ("pictures.py", "fig.savefig(buf"): "renders into memory",
    ("engines/torchcaffe/constraints.py", "np.savez_compressed(buf"): "into memory; written atomically by the caller",
    ("cli/engine.py", "np.savez(buf"): "into memory; written atomically by the caller",
    ("train/logs.py", "self.csv_path.open(\"a\""): "log.csv grows a row at a time (a reader takes whole lines)",
    ("train/logs.py", "self.raw_path.open(\"a\""): "train.log grows a line at a time",
    ("engines/pycaffe/runtime.py", "open(self.path, \"ab\")"): "Caffe's glog output appended to caffe.log",
    ("caffe_build/build.py", "log.open(\"a\")"): "the build log grows as the build runs",
    ("caffe_build/build.py", "path.write_text(text.replace(fix.old, fix.new))"): "sources in a temporary build tree",
    ("caffe_build/build.py", "(src / dest).write_text("): "build files in a temporary build tree",
    ("caffe_build/build.py", "pth.write_text("): "a one-line .pth in the venv, rewritten whole on every build",
    ("caffe_build/build.py", "log.write_text("): "starts the build log",
    ("caffe_build/build.py", "(staging / MARKER).write_text("): "inside the staging folder, renamed into place",
    ("caffe_build/toolkit.py", "log.open(\"a\")"): "the build log",
    ("caffe_build/toolkit.py", "source.write_text("): "a probe kernel in a temporary folder",
    ("caffe_build/toolkit.py", "(staging / MARKER).write_text("): "inside the staging folder, renamed into place",
    ("caffe_build/bundle.py", "shutil.copyfile(source, lib / soname)"): "inside the staging folder, renamed into place",
    ("caffe_build/bundle.py", "(staging / MARKER).write_text("): "inside the staging folder, renamed into place",
}


def _writes() -> list[tuple[str, int, str]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("proto/"):
            continue
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.Call):
                continue
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
            # methods and module functions (path.write_text, shutil.copyfile, np.save, fig.savefig); a bare name is
            # one of our own helpers (proto.write_text is atomic), and x.copy() with no target copies in memory
            is_write = (name in WRITERS and isinstance(fn, ast.Attribute)
                        and not (name in ("copy", "copy2") and len(node.args) < 2))
            if name in ("open", "fdopen"):  # open(...) or Path.open(...) with a mode that writes
                modes = [a.value for a in node.args[1:2] + [k.value for k in node.keywords if k.arg == "mode"]
                         if isinstance(a, ast.Constant) and isinstance(a.value, str)]
                if isinstance(fn, ast.Attribute) and fn.attr == "open" and node.args[:1]:
                    modes += [a.value for a in node.args[:1] if isinstance(a, ast.Constant) and isinstance(a.value, str)]
                is_write = any(set(m) & set("wax") for m in modes)
            if is_write:
                found.append((rel, node.lineno, ast.get_source_segment(source, node) or name))
    return found


def test_every_write_of_a_file_goes_through_the_atomic_writer() -> None:
    offending = [f"{rel}:{line}: {text.splitlines()[0]}" for rel, line, text in _writes()
                 if not any(rel == f and piece in text for f, piece in ALLOWED)]
    assert not offending, "write final artifacts with squeezecaffe.fileio:\n" + "\n".join(offending)


def test_the_scan_sees_writes() -> None:
    """The scan has teeth: each listed exception is still found (a stale entry is removed, not kept)."""
    seen = _writes()
    stale = [(f, piece) for f, piece in ALLOWED if not any(rel == f and piece in text for rel, _, text in seen)]
    assert not stale, f"exceptions that match no write any more: {stale}"
