"""What `make caffe` builds: a pinned Caffe source distribution, the Debian packages it needs, and our fixes.

Everything that changes the result feeds `recipe_hash()`, so a changed recipe builds into a new cache directory
instead of reusing a stale one.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from importlib import resources

# A source distribution of an SSD-era Caffe fork on PyPI. Its own setup.py needs conda and Python <= 3.9, so
# only its sources are used; the build files are ours (CMakeLists.txt in this package).
SDIST_REQUIREMENT = "brocolli-caffe==9.0.2"
SDIST_FILE = "brocolli-caffe-9.0.2.tar.gz"
SDIST_SHA256 = "c6410cc60bdd6db685d441b66be7df05410f8850ac88d6b75d48ef9b2315c08a"

# Debian 12 / Ubuntu 22.04+ names. boost-python's package provides the library for the system Python's version;
# CMake looks for the one matching the venv's Python (3.11 on Debian 12).
APT_PACKAGES = (
    "build-essential", "cmake", "pkg-config",
    "libboost-system-dev", "libboost-thread-dev", "libboost-filesystem-dev", "libboost-regex-dev",
    "libboost-python-dev", "libprotobuf-dev", "protobuf-compiler", "libgoogle-glog-dev", "libgflags-dev",
    "libhdf5-dev", "liblmdb-dev", "libleveldb-dev", "libsnappy-dev", "libopencv-dev", "libopenblas-dev",
)

# (requirement, module) of the Python packages pycaffe's own modules import at `import caffe` (caffe.io needs
# scikit-image and scipy).
PYTHON_PACKAGES = (("scikit-image>=0.21,<1", "skimage"), ("scipy>=1.10,<2", "scipy"), ("six>=1.16,<2", "six"))


@dataclass(frozen=True)
class SourceFix:
    path: str  # relative to the source root
    old: str  # exact text that must be present (the build stops if the sources differ from what we know)
    new: str
    why: str


SOURCE_FIXES = (
    SourceFix("src/caffe/net.cpp", '#include "caffe/test/test_caffe_main.hpp"\n', "",
              "net.cpp includes the gtest test main header but uses nothing from it; gtest is not built"),
)

# Stale generated protobuf code in the sdist (another protoc version): removed so ours are the only ones seen.
REMOVED_FILES = ("src/caffe/proto/caffe.pb.cc", "include/caffe/proto/caffe.pb.h", "python/caffe/proto/caffe_pb2.py")

# Our build files, copied over the source root.
BUILD_FILES = ("CMakeLists.txt", "squeezecaffe_opencv3_compat.h")

# The tools squeezecaffe uses (all of tools/*.cpp are built).
TOOLS = ("caffe", "convert_imageset", "compute_image_mean")


def build_file_text(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text()


def recipe_hash() -> str:
    """12 hex digits over everything that decides the build's output."""
    h = hashlib.sha256()
    h.update(f"python{sys.version_info[0]}.{sys.version_info[1]}\0".encode())  # _caffe is built for one Python
    for part in (SDIST_REQUIREMENT, SDIST_SHA256, *APT_PACKAGES, *(req for req, _ in PYTHON_PACKAGES),
                 *REMOVED_FILES):
        h.update(part.encode() + b"\0")
    for fix in SOURCE_FIXES:
        h.update(f"{fix.path}\0{fix.old}\0{fix.new}\0".encode())
    for name in BUILD_FILES:
        h.update(build_file_text(name).encode() + b"\0")
    return h.hexdigest()[:12]
