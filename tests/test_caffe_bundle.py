"""The portable bundle of the CUDA build (`build-caffe --cuda --bundle DIR`), where this machine has a cached CUDA
build (skipped elsewhere: CI keeps the CPU build; docs/caffe.md). Written into a fresh folder, the bundle must hold
every non-CUDA library it loads and run a CPU-mode forward, through the C interface, in a fresh interpreter whose
library path holds only the toolkit's CUDA libraries: what a GPU machine with PyTorch provides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from squeezecaffe.caffe_build import bundle, locate, recipe
from squeezecaffe.caffe_build.toolkit import CudaToolkit, toolkit_dir

pytestmark = pytest.mark.caffe

FORWARD = """
import sys
from pathlib import Path
import numpy as np
from squeezecaffe.engines.pycaffe.capi import CaffeLibrary
from tests.test_caffe_capi import NET, _inputs
caffe = CaffeLibrary(Path(sys.argv[1]) / "lib" / "libsqueezecaffe_capi_cuda.so", preload_cuda=True)
(Path(sys.argv[2]) / "net.prototxt").write_text(NET)
caffe.set_mode_cpu()
caffe.set_random_seed(4)
net = caffe.Net(str(Path(sys.argv[2]) / "net.prototxt"), caffe.TRAIN)
x, y = _inputs()
net.forward(data=x, label=y)
print(float(net.blobs["loss"].data))
"""


@pytest.fixture(scope="module")
def cuda_build() -> locate.CaffeBuild:
    build = locate.finished_build(locate.build_dir(cuda=True))
    if build is None or not (toolkit_dir() / "toolkit.json").is_file():
        pytest.skip("no cached CUDA build here (squeezecaffe build-caffe --cuda)")
    return build


def test_the_bundle_carries_what_it_loads_and_runs_a_forward(cuda_build, tmp_path: Path) -> None:
    kit = CudaToolkit(toolkit_dir())
    out = bundle.write_bundle(cuda_build, tmp_path / "bundle", kit.library_dirs, print)
    info = json.loads((out / locate.MARKER).read_text())
    assert info["bundle"] is True and info["needs"] == list(recipe.CUDA_RUNTIME_SONAMES)
    libs = {p.name for p in (out / "lib").iterdir()}
    assert {"libcaffe_cuda.so", "libsqueezecaffe_capi_cuda.so", "libprotobuf.so.32", "libglog.so.1", "libblas.so.3"} <= libs
    assert not libs & (set(recipe.CUDA_RUNTIME_SONAMES) | bundle.SYSTEM_SONAMES)
    assert info["bytes"] < 60 * 2**20  # small enough to carry to a GPU machine
    for lib in (out / "lib").iterdir():  # every library finds its neighbours wherever the folder goes
        rpath = subprocess.run(["patchelf", "--print-rpath", str(lib)], capture_output=True, text=True).stdout.strip()
        assert rpath == "$ORIGIN", f"{lib.name}: RPATH {rpath!r}"
    env = {k: v for k, v in os.environ.items() if k not in ("SQUEEZECAFFE_CAFFE_HOME", "LD_LIBRARY_PATH")}
    env["LD_LIBRARY_PATH"] = os.pathsep.join(str(d) for d in kit.library_dirs)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", FORWARD, str(out), str(tmp_path)], capture_output=True, text=True,
                            env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) > 0  # a softmax loss over 5 classes
    # written again over itself: replaced, not refused
    bundle.write_bundle(cuda_build, out, kit.library_dirs, print)


def test_caffe_on_cuda_without_a_gpu_is_one_line(cuda_build, data: Path, tmp_path: Path) -> None:
    """The CUDA build is found for --device cuda, and the missing GPU is reported before Caffe touches it."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU (tests/test_gpu_caffe.py runs there)")
    env = {k: v for k, v in os.environ.items() if k not in ("SQUEEZECAFFE_CAFFE_HOME", "SQUEEZECAFFE_CAFFE_BUILD")}
    for device in ("cuda", "cuda:1"):
        result = subprocess.run([sys.executable, "-m", "squeezecaffe", "train", "cifar_resnet_1111", "--data",
                                 str(data), "--engine", "caffe", "--device", device, "--epochs", "1", "--run-dir",
                                 str(tmp_path / device.replace(":", "_"))], capture_output=True, text=True, env=env)
        assert result.returncode == 2, result.stderr[-2000:]
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"squeezecaffe: error: --device {device}: no CUDA device can "
                                                       "be used here ("), result.stderr
