"""Importing pycaffe from our build, and reading what Caffe says through glog.

Caffe reports per-iteration losses only through glog (the fork's Python API exposes no smoothed loss and no
learning rate), and glog writes to file descriptor 2 before InitGoogleLogging is called, which pycaffe never
does. `GlogTap` points descriptor 2 at a log file around each Caffe call and hands back the new lines.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from squeezecaffe.errors import CAFFE_ENGINE_MISSING, UserError

_caffe = None


def import_caffe():
    """The `caffe` module from our build (or SQUEEZECAFFE_CAFFE_HOME, or one already importable)."""
    global _caffe
    if _caffe is not None:
        return _caffe
    from squeezecaffe.caffe_build.locate import find_build

    build = find_build()
    if build is not None and str(build.python_dir) not in sys.path:
        sys.path.insert(0, str(build.python_dir))
    # INFO must reach us: the per-iteration loss and rate exist only as glog INFO lines (a user's
    # GLOG_minloglevel=2 would leave the caffe engine blind); all of it goes to the run's caffe.log anyway.
    os.environ["GLOG_minloglevel"] = "0"  # noqa: SIM112 - glog reads this exact name
    try:
        import caffe
    except ImportError as exc:
        if build is None:
            raise UserError(CAFFE_ENGINE_MISSING) from None
        raise UserError(f"{build.python_dir}: `import caffe` failed ({exc}); rebuild with: make caffe") from None
    _caffe = caffe
    return caffe


def caffe_available() -> bool:
    try:
        import_caffe()
    except UserError:
        return False
    return True


class GlogTap:
    """Redirects fd 2 to `path` (appending) while inside `with`; `.text` holds what was written meanwhile."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.text = ""

    def __enter__(self) -> GlogTap:
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._fh = open(self.path, "ab")  # closed in __exit__
        self._start = self._fh.seek(0, os.SEEK_END)
        os.dup2(self._fh.fileno(), 2)
        return self

    def __exit__(self, *exc) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._fh.close()
        with open(self.path, "rb") as fh:
            fh.seek(self._start)
            self.text = fh.read().decode(errors="replace")


# "Iteration 12 (...), loss = 2.3" (BVLC) or "Iteration 12, loss = 2.3" (older forks); iteration counts from 0.
_LOSS = re.compile(r"\] Iteration (\d+)(?: \([^)]*\))?, loss = (\S+)")
_LR = re.compile(r"\] Iteration (\d+), lr = (\S+)")
_ERROR = re.compile(r"^[EF]\d{4} .*?\] (.*)$", re.M)


def parse_iterations(text: str) -> dict[int, dict[str, float]]:
    """{iteration (from 0): {"loss": .., "lr": ..}} from Caffe's display lines."""
    out: dict[int, dict[str, float]] = {}
    for regex, key in ((_LOSS, "loss"), (_LR, "lr")):
        for m in regex.finditer(text):
            out.setdefault(int(m.group(1)), {})[key] = float(m.group(2))
    return out


def last_error(text: str) -> str | None:
    """The last ERROR/FATAL line glog wrote, for a one-line message."""
    found = _ERROR.findall(text)
    return found[-1].strip() if found else None
