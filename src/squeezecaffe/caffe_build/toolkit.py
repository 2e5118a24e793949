"""The CUDA toolkit for `build-caffe --cuda`: NVIDIA's CUDA 13 and cuDNN 9 wheels (recipe.CUDA_WHEELS), installed
together into `<cache>/cuda-toolkit-<hash>/` by pip, with no root and no system CUDA.

The wheels unpack into one tree (nvidia/cu13/{bin,include,lib,nvvm}, nvidia/cudnn/{include,lib}) in which nvcc finds
cicc, ptxas and its headers through its own nvcc.profile. They ship versioned libraries only (libcudart.so.13), so
the unversioned names a linker looks for are added as links, and lib64 (where nvcc looks) as a link to lib. A
toolkit is complete once `toolkit.json` is written (last, after nvcc has compiled a kernel).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from squeezecaffe.caffe_build import recipe
from squeezecaffe.caffe_build.locate import cache_root
from squeezecaffe.errors import UserError

MARKER = "toolkit.json"


@dataclass(frozen=True)
class CudaToolkit:
    root: Path

    @property
    def cuda_home(self) -> Path:
        return self.root / "nvidia" / "cu13"

    @property
    def nvcc(self) -> Path:
        return self.cuda_home / "bin" / "nvcc"

    @property
    def cudnn_home(self) -> Path:
        return self.root / "nvidia" / "cudnn"

    @property
    def library_dirs(self) -> tuple[Path, ...]:
        return (self.cuda_home / "lib", self.cudnn_home / "lib")


def toolkit_dir() -> Path:
    digest = hashlib.sha256("\0".join(recipe.CUDA_WHEELS).encode()).hexdigest()[:12]
    return cache_root() / f"cuda-toolkit-{digest}"


def _link_unversioned(lib_dir: Path) -> None:
    for path in sorted(lib_dir.glob("lib*.so.*")):
        plain = lib_dir / (path.name.split(".so.")[0] + ".so")
        if not plain.exists():
            plain.symlink_to(path.name)


def _check_nvcc(kit: CudaToolkit, work: Path) -> None:
    """nvcc compiles a kernel for the recipe's newest architecture: a toolkit that cannot is not a toolkit."""
    source = work / "probe.cu"
    source.write_text("__global__ void probe(float* x) { x[threadIdx.x] *= 2.0f; }\n")
    result = subprocess.run([str(kit.nvcc), "-c", "-arch=sm_90", "-o", str(work / "probe.o"), str(source)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"{kit.nvcc}: cannot compile a CUDA kernel ({last})")


def ensure_toolkit(echo: Callable[[str], None], log: Path) -> CudaToolkit:
    """The cached toolkit, installed from PyPI (about 1 GB of wheels, 1.4 GB unpacked) when missing."""
    target = toolkit_dir()
    if (target / MARKER).is_file():
        return CudaToolkit(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    echo(f"installing the CUDA 13 toolkit and cuDNN from PyPI wheels into {target}")
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".toolkit-") as tmp:
        staging = Path(tmp) / "kit"
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--only-binary", ":all:",
               "--target", str(staging), *recipe.CUDA_WHEELS]
        with log.open("a") as fh:
            fh.write(f"\n$ {' '.join(cmd)}\n")
            fh.flush()
            result = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            raise UserError(f"pip could not install the CUDA wheels (exit {result.returncode}; log: {log})")
        kit = CudaToolkit(staging)
        for lib_dir in kit.library_dirs:
            _link_unversioned(lib_dir)
        (kit.cuda_home / "lib64").symlink_to("lib")  # where nvcc.profile looks for 64-bit libraries
        _check_nvcc(kit, Path(tmp))
        (staging / MARKER).write_text(json.dumps({"wheels": list(recipe.CUDA_WHEELS)}, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    return CudaToolkit(target)
