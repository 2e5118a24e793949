"""`build-caffe --cuda --bundle DIR`: the CUDA build made portable, for a GPU machine that has CUDA 13 (through
PyTorch's wheels), Python and numpy, but none of Caffe's dependencies and no network.

DIR/lib holds libcaffe_cuda, our C interface (libsqueezecaffe_capi_cuda.so) and every non-CUDA shared library they
load (protobuf, glog, gflags, Boost, HDF5, LMDB, LevelDB, the reference BLAS and what those load), each under its
soname with the RPATH `$ORIGIN`, so the folder works wherever it is unpacked on a Linux at least as new as the one
that built it. Left out: the C and C++ runtimes every Linux has (glibc, libstdc++, libgcc_s: built on Debian 12,
the bundle needs glibc >= 2.36 and GLIBCXX_3.4.30, which Ubuntu 24.04 and Debian 12 and later have) and the CUDA
runtime libraries (recipe.CUDA_RUNTIME_SONAMES), which the target's PyTorch installed and capi.py loads from
there. No pycaffe extension: it would tie the bundle to this Python; the
engines reach the bundle through the C interface (`SQUEEZECAFFE_CAFFE_HOME=DIR`). build.json is written last, and
the folder is renamed into place only when complete and loadable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from squeezecaffe.caffe_build import recipe
from squeezecaffe.caffe_build.locate import MARKER, CaffeBuild, finished_build
from squeezecaffe.errors import UserError

# Provided by every glibc-based system (and required to match it): never carried.
SYSTEM_SONAMES = frozenset({
    "linux-vdso.so.1", "libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1", "libresolv.so.2",
    "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1", "libstdc++.so.6", "libgcc_s.so.1",
})
LIBRARIES = ("libsqueezecaffe_capi_cuda.so",)  # libcaffe_cuda.so and the rest come with it (ldd)
_LDD_LINE = re.compile(r"^\s*(\S+)\s+=>\s+(not found|.*?\s+\(0x[0-9a-f]+\))\s*$")


def shared_dependencies(library: Path, cuda_dirs: tuple[Path, ...]) -> dict[str, Path]:
    """{soname: path} of everything `library` loads, transitively (ldd), less the system and CUDA libraries."""
    out = subprocess.run(["ldd", str(library)], capture_output=True, text=True)
    if out.returncode != 0:
        raise UserError(f"{library}: ldd cannot read it ({out.stderr.strip() or out.stdout.strip()})")
    found: dict[str, Path] = {}
    for line in out.stdout.splitlines():
        m = _LDD_LINE.match(line)
        if not m:
            continue
        soname, where = m.groups()
        if soname in SYSTEM_SONAMES or soname in recipe.CUDA_RUNTIME_SONAMES:
            continue
        if where == "not found":
            raise UserError(f"{library}: needs {soname}, which is not found on this machine")
        path = Path(where.rsplit(" (0x", 1)[0]).resolve()
        if any(path.is_relative_to(d.resolve()) for d in cuda_dirs):
            continue  # another CUDA library of the toolkit: the target's PyTorch wheels provide it
        found[soname] = path
    return found


def _set_rpath(path: Path) -> None:
    result = subprocess.run(["patchelf", "--set-rpath", "$ORIGIN", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"{path}: patchelf failed ({result.stderr.strip()})")


def check_bundle(home: Path, cuda_dirs: tuple[Path, ...]) -> None:
    """Load the bundle through the C interface in a fresh interpreter, the CUDA libraries coming from `cuda_dirs`
    (as they come from PyTorch's wheels on the target): a bundle that does not load is not written."""
    code = ("import sys; from pathlib import Path; from squeezecaffe.engines.pycaffe.capi import CaffeLibrary; "
            "c = CaffeLibrary(Path(sys.argv[1]) / 'lib' / 'libsqueezecaffe_capi_cuda.so', preload_cuda=True); "
            "assert c.cuda_built(); print('ok')")
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(str(d) for d in cuda_dirs))
    result = subprocess.run([sys.executable, "-c", code, str(home)], capture_output=True, text=True, env=env)
    if result.returncode != 0 or result.stdout.strip() != "ok":
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"{home}: the bundle does not load ({last})")


def write_bundle(build: CaffeBuild, dest: Path, cuda_dirs: tuple[Path, ...], echo: Callable[[str], None]) -> Path:
    """Write the bundle of a finished CUDA build into `dest` (replacing an earlier bundle there, nothing else)."""
    if not build.cuda:
        raise UserError(f"{build.home}: a bundle is made of the CUDA build (build-caffe --cuda --bundle DIR)")
    if shutil.which("patchelf") is None:
        raise UserError("writing a bundle needs patchelf (it sets each library's RPATH); run: sudo apt-get install "
                        "patchelf")
    dest = dest.resolve()
    if dest.exists() and not dest.is_dir():
        raise UserError(f"{dest}: exists and is not a folder; choose an empty or new folder")
    if dest.exists() and any(dest.iterdir()):
        old = finished_build(dest)
        if old is None or not old.is_bundle:
            raise UserError(f"{dest}: exists and is not a Caffe bundle; choose an empty or new folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}-") as tmp:
        staging = Path(tmp) / "bundle"
        lib = staging / "lib"
        lib.mkdir(parents=True)
        carried: dict[str, Path] = {}
        for name in LIBRARIES:
            source = build.home / "lib" / name
            if not source.is_file():
                raise UserError(f"{source}: missing from the build; rebuild with: squeezecaffe build-caffe --cuda "
                                "--force")
            carried[name] = source
            carried.update(shared_dependencies(source, cuda_dirs))
        for soname, source in sorted(carried.items()):
            shutil.copyfile(source, lib / soname)
            os.chmod(lib / soname, 0o755)
            _set_rpath(lib / soname)
        size = sum(p.stat().st_size for p in lib.iterdir())
        info = {"bundle": True, "cpu_only": False, "recipe": build.info.get("recipe"), "built": build.info.get("built"),
                "sdist": build.info.get("sdist"), "cuda_architectures": build.info.get("cuda_architectures"),
                "cuda_wheels": build.info.get("cuda_wheels"), "opencv": build.info.get("opencv"),
                "needs": list(recipe.CUDA_RUNTIME_SONAMES), "libraries": sorted(carried), "bytes": size,
                "from": str(build.home)}
        (staging / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        check_bundle(staging, cuda_dirs)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    echo(f"bundle written: {dest} ({len(carried)} libraries, {size / 2**20:.1f} MiB; needs "
         f"{', '.join(recipe.CUDA_RUNTIME_SONAMES)} from PyTorch's CUDA wheels)")
    return dest
