"""Where a finished Caffe build lives, and whether this process can use it.

A build is `<cache>/caffe-<recipe hash>/` holding `lib/libcaffe.so`, `bin/<tools>`, `python/caffe/` and a
`build.json` written last (a directory without it is an interrupted build and is never used).
`SQUEEZECAFFE_CAFFE_HOME` points at another build (a BVLC Caffe install with the same layout, for example).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from squeezecaffe.caffe_build.recipe import TOOLS, recipe_hash

MARKER = "build.json"


def cache_root() -> Path:
    """$SQUEEZECAFFE_CACHE, else $XDG_CACHE_HOME/squeezecaffe, else ~/.cache/squeezecaffe."""
    if os.environ.get("SQUEEZECAFFE_CACHE"):
        return Path(os.environ["SQUEEZECAFFE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "squeezecaffe"


def build_dir() -> Path:
    """The directory this recipe builds into (it may not exist yet)."""
    return cache_root() / f"caffe-{recipe_hash()}"


@dataclass
class CaffeBuild:
    home: Path
    info: dict

    @property
    def python_dir(self) -> Path:
        return self.home / "python"

    def tool(self, name: str) -> Path | None:
        path = self.home / "bin" / name
        return path if path.is_file() and os.access(path, os.X_OK) else None


def find_build() -> CaffeBuild | None:
    """The finished build to use, or None. An explicit SQUEEZECAFFE_CAFFE_HOME wins over the cache."""
    explicit = os.environ.get("SQUEEZECAFFE_CAFFE_HOME")
    home = Path(explicit) if explicit else build_dir()
    marker = home / MARKER
    if explicit and (home / "python" / "caffe").is_dir() and not marker.is_file():
        return CaffeBuild(home, {"source": "SQUEEZECAFFE_CAFFE_HOME"})
    if not marker.is_file():
        return None
    return CaffeBuild(home, json.loads(marker.read_text()))


def find_tool(name: str) -> Path | None:
    """A Caffe tool from our build, else from PATH (a system Caffe)."""
    build = find_build()
    if build is not None and name in TOOLS and build.tool(name):
        return build.tool(name)
    found = shutil.which(name)
    return Path(found) if found else None
