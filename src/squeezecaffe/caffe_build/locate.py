"""Where a finished Caffe build lives, and whether this process can use it.

A build is `<cache>/caffe-<recipe hash>/` (CPU) or `<cache>/caffe-cuda-<recipe hash>/` holding `lib/libcaffe.so`,
`lib/libsqueezecaffe_capi.so`, `bin/<tools>`, `python/caffe/` and a `build.json` written last (a directory without
it is an interrupted build and is never used). A bundle (`build-caffe --cuda --bundle DIR`) has `lib/` and
`build.json` only. `SQUEEZECAFFE_CAFFE_HOME` points at another build or a bundle (or a BVLC Caffe install with the
same layout); `SQUEEZECAFFE_CAFFE_BUILD=cuda|cpu` picks between the two cached builds where both exist (default:
the CPU one, which the parity suite is pinned to).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from squeezecaffe.caffe_build.recipe import TOOLS, recipe_hash
from squeezecaffe.errors import UserError

MARKER = "build.json"


def cache_root() -> Path:
    """$SQUEEZECAFFE_CACHE, else $XDG_CACHE_HOME/squeezecaffe, else ~/.cache/squeezecaffe."""
    if os.environ.get("SQUEEZECAFFE_CACHE"):
        return Path(os.environ["SQUEEZECAFFE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "squeezecaffe"


def build_dir(cuda: bool = False) -> Path:
    """The directory this recipe builds into (it may not exist yet)."""
    return cache_root() / (f"caffe-cuda-{recipe_hash(True)}" if cuda else f"caffe-{recipe_hash()}")


@dataclass
class CaffeBuild:
    home: Path
    info: dict

    @property
    def python_dir(self) -> Path:
        return self.home / "python"

    @property
    def cuda(self) -> bool:
        """Known to be built with CUDA (our CUDA build or bundle); an install without build.json is not known."""
        return self.info.get("cpu_only") is False

    @property
    def cpu_only(self) -> bool:
        """Known to be CPU-only (our CPU build); an install without build.json may have CUDA: Caffe decides."""
        return self.info.get("cpu_only") is True

    @property
    def capi_library(self) -> Path:
        """Our C interface: libsqueezecaffe_capi_cuda.so in a CUDA build or bundle (a soname of its own, so a
        process holding the CPU build can still load it), libsqueezecaffe_capi.so otherwise."""
        cuda = self.home / "lib" / "libsqueezecaffe_capi_cuda.so"
        return cuda if cuda.is_file() else self.home / "lib" / "libsqueezecaffe_capi.so"

    @property
    def is_bundle(self) -> bool:
        """A carried bundle: our C interface only, no pycaffe extension module (tied to the Python it was built for)."""
        return bool(self.info.get("bundle"))

    def tool(self, name: str) -> Path | None:
        path = self.home / "bin" / name
        return path if path.is_file() and os.access(path, os.X_OK) else None


BUILD_CHOICE = "SQUEEZECAFFE_CAFFE_BUILD"


def finished_build(home: Path) -> CaffeBuild | None:
    marker = home / MARKER
    if not marker.is_file():
        return None
    try:
        info = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # a damaged marker is an unfinished build: never used
    return CaffeBuild(home, info) if isinstance(info, dict) else None


def find_build(cuda: bool = False) -> CaffeBuild | None:
    """The finished build to use, or None. An explicit SQUEEZECAFFE_CAFFE_HOME wins over the cache; `cuda=True`
    asks for the CUDA build; otherwise SQUEEZECAFFE_CAFFE_BUILD, else the CPU build, else the CUDA one."""
    explicit = os.environ.get("SQUEEZECAFFE_CAFFE_HOME")
    if explicit:
        home = Path(explicit)
        found = finished_build(home)
        if found is None and (home / "python" / "caffe").is_dir():
            return CaffeBuild(home, {"source": "SQUEEZECAFFE_CAFFE_HOME"})
        return found
    choice = os.environ.get(BUILD_CHOICE, "").strip().lower()
    if choice not in ("", "cpu", "cuda"):
        raise UserError(f"{BUILD_CHOICE}={choice!r}: expected cpu or cuda")
    if cuda or choice == "cuda":
        return finished_build(build_dir(cuda=True))
    if choice == "cpu":
        return finished_build(build_dir())
    return finished_build(build_dir()) or finished_build(build_dir(cuda=True))


def find_tool(name: str) -> Path | None:
    """A Caffe tool from our build, else from PATH (a system Caffe)."""
    build = find_build()
    if build is not None and name in TOOLS and build.tool(name):
        return build.tool(name)
    found = shutil.which(name)
    return Path(found) if found else None
