"""Importing pycaffe from our build, and reading what Caffe says through glog.

Caffe reports per-iteration losses only through glog (the fork's Python API exposes no smoothed loss and no
learning rate), and glog writes to file descriptor 2 before InitGoogleLogging is called, which pycaffe never
does. `GlogTap` points descriptor 2 at a log file around each Caffe call and hands back the new lines.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path

from squeezecaffe.engines.pycaffe import abort_watch
from squeezecaffe.errors import CAFFE_ENGINE_MISSING, UserError

_caffe = None
_caffe_build = None  # the CaffeBuild _caffe came from (None: a `caffe` already importable)
# What a failed Caffe call raises in Python: Boost.Python translates std::exception to RuntimeError,
# std::invalid_argument to ValueError, std::out_of_range to IndexError, std::overflow_error to OverflowError and
# std::bad_alloc to MemoryError; our C interface raises RuntimeError. Anything else is our own bug and stays one.
CAFFE_ERRORS: tuple[type[Exception], ...] = (RuntimeError, ValueError, IndexError, OverflowError, MemoryError)
BINDING = "SQUEEZECAFFE_CAFFE_BINDING"  # pycaffe (the default where the build has it) or capi


def import_caffe(cuda: bool = False):
    """The `caffe` module from our build (or SQUEEZECAFFE_CAFFE_HOME, or one already importable); for a bundle, or
    with SQUEEZECAFFE_CAFFE_BINDING=capi, our C interface through ctypes (capi.CaffeLibrary), which offers the same
    calls. `cuda=True` asks for a build with CUDA (the cached CUDA build where both are cached)."""
    global _caffe, _caffe_build
    if _caffe is not None:
        if cuda and _caffe_build is not None and _caffe_build.cpu_only:
            raise UserError("--device cuda: this process already loaded a CPU-only Caffe; run the GPU work in its "
                            "own process")
        return _caffe
    from squeezecaffe.caffe_build.locate import find_build

    build = find_build(cuda=cuda)
    no_cuda_build = ("--engine caffe --device cuda: no Caffe build with CUDA here; build one with: squeezecaffe "
                     "build-caffe --cuda (make caffe CUDA=1), or use --engine torch")
    if cuda and build is not None and build.cpu_only:
        raise UserError(f"--engine caffe --device cuda: the Caffe build in {build.home} is CPU-only")
    if cuda and build is None and find_build() is not None:  # only our CPU build: say what to build
        raise UserError(no_cuda_build)
    # INFO must reach us: the per-iteration loss and rate exist only as glog INFO lines (a user's
    # GLOG_minloglevel=2 would leave the caffe engine blind); all of it goes to the run's caffe.log anyway.
    os.environ["GLOG_minloglevel"] = "0"  # noqa: SIM112 - glog reads this exact name
    binding = os.environ.get(BINDING, "").strip().lower()
    if binding not in ("", "pycaffe", "capi"):
        raise UserError(f"{BINDING}={binding!r}: expected pycaffe or capi")
    if build is not None and (binding == "capi" or build.is_bundle):
        _caffe, _caffe_build = _load_capi(build), build
        return _caffe
    if build is not None and str(build.python_dir) not in sys.path:
        sys.path.insert(0, str(build.python_dir))
    try:
        import caffe
    except ImportError as exc:
        if build is None:
            raise UserError(no_cuda_build if cuda else CAFFE_ENGINE_MISSING) from None
        raise UserError(f"{build.python_dir}: `import caffe` failed ({exc}); rebuild with: make caffe") from None
    _caffe, _caffe_build = caffe, build  # build None: a caffe already importable (a user's own install)
    return caffe


def cuda_device_index(device: str) -> int:
    """`cuda` -> 0, `cuda:N` -> N; anything else is one line."""
    name, colon, index = device.partition(":")
    if name != "cuda" or (colon and not index.isdigit()):
        raise UserError(f"--device {device}: expected cpu, cuda or cuda:N")
    return int(index or 0)


def select_device(caffe, device: str) -> None:
    """Caffe's mode and device for `device` (cpu, cuda, cuda:N), checked first so that a machine without that GPU
    gets one line instead of Caffe's fatal CUDA check (where the C interface can count the devices: our builds)."""
    build = _caffe_build
    if device == "cpu":
        # A CUDA Caffe makes its cuBLAS and cuRAND handles at its first use and, without a GPU, says at ERROR level
        # that it cannot: expected in CPU mode, alarming on a terminal. That first use is here, muted.
        with GlogTap(os.devnull) if build is not None and build.cuda else contextlib.nullcontext():
            caffe.set_mode_cpu()
        return
    index = cuda_device_index(device)
    if build is not None and build.cpu_only:
        raise UserError(f"--device {device}: the Caffe in use is CPU-only")
    counter = caffe if hasattr(caffe, "cuda_device_count") else (
        _load_capi(build) if build is not None and build.capi_library.is_file() else None)
    if counter is not None:
        try:
            count = counter.cuda_device_count()
        except RuntimeError as exc:
            raise UserError(f"--device {device}: no CUDA device can be used here ({exc})") from None
        if index >= count:
            raise UserError(f"--device {device}: this machine has {count} CUDA device(s)"
                            + (f" (cuda:0..cuda:{count - 1})" if count else ""))
    caffe.set_device(index)
    caffe.set_mode_gpu()


def _load_capi(build):
    from squeezecaffe.engines.pycaffe.capi import CaffeLibrary

    if not build.capi_library.is_file():
        raise UserError(f"{build.home}: has no {build.capi_library.name} (built before the C interface existed); "
                        "rebuild with: squeezecaffe build-caffe --force")
    try:
        return CaffeLibrary(build.capi_library, preload_cuda=build.is_bundle)
    except ImportError as exc:
        raise UserError(str(exc)) from None


def caffe_available() -> bool:
    try:
        import_caffe()
    except UserError:
        return False
    return True


class GlogTap:
    """Redirects fd 2 to `path` (appending) while inside `with`; `.text` holds what was written meanwhile.

    Where Caffe aborts the process inside the tap (a failed CHECK), abort_watch prints its FATAL line on the
    terminal, which the redirect would otherwise keep from the user."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.text = ""
        self._watched = self.path != Path(os.devnull)

    def __enter__(self) -> GlogTap:
        sys.stderr.flush()
        self._fh = open(self.path, "ab")  # closed in __exit__
        self._start = self._fh.seek(0, os.SEEK_END)
        if self._watched:
            abort_watch.tap_opened(str(self.path), self._start)
        self._saved = os.dup(2)
        os.dup2(self._fh.fileno(), 2)
        return self

    def __exit__(self, *exc) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._fh.close()
        if self._watched:
            abort_watch.tap_closed()
        with open(self.path, "rb") as fh:
            fh.seek(self._start)
            self.text = fh.read().decode(errors="replace")


# "Iteration 12 (...), loss = 2.3" (BVLC) or "Iteration 12, loss = 2.3" (older forks); iteration counts from 0.
_LOSS = re.compile(r"\] Iteration (\d+)(?: \([^)]*\))?, loss = (\S+)")
_LR = re.compile(r"\] Iteration (\d+), lr = (\S+)")
# glog's prefix: severity, then MMDD (glog < 0.6) or YYYYMMDD (0.6 and later, Debian 12's), time, thread id, file:line
_ERROR = re.compile(r"^[EF](?:\d{4}){1,2} .*?\] (.*)$", re.M)


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
