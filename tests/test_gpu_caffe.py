"""Real Caffe on the GPU (marker `gpu`; skipped without a CUDA device or without a CUDA Caffe: the cached
`build-caffe --cuda` build, or a bundle named by SQUEEZECAFFE_CAFFE_HOME, as bench/gpu_session.sh's `caffe` step
does on a GPU machine).

The same net through the C interface in CPU mode and in GPU mode (cuDNN convolutions, ReLU, pooling and softmax,
Caffe's own CUDA kernels for the rest): forward, backward and three Nesterov steps agree within float32 rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from squeezecaffe.caffe_build.locate import find_build
from squeezecaffe.engines.pycaffe.capi import CaffeLibrary
from squeezecaffe.engines.pycaffe.runtime import GlogTap, import_caffe
from squeezecaffe.errors import UserError
from tests.test_caffe_capi import NET, SOLVER, _inputs

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")]


@pytest.fixture(scope="module")
def caffe() -> CaffeLibrary:
    """The CUDA Caffe through the C interface. One Caffe per process (both register caffe.proto with protobuf): where
    this process already loaded the CPU build, the test is skipped with the way to run it."""
    build = find_build(cuda=True)
    if build is None or not build.cuda:
        pytest.skip("no CUDA Caffe: squeezecaffe build-caffe --cuda, or SQUEEZECAFFE_CAFFE_HOME=<bundle>")
    try:
        loaded = import_caffe(cuda=True)
    except UserError as exc:
        pytest.skip(f"{exc} (SQUEEZECAFFE_CAFFE_BUILD=cuda pytest -m gpu tests/test_gpu_caffe.py)")
    library = loaded if isinstance(loaded, CaffeLibrary) else CaffeLibrary(build.capi_library)
    assert library.cuda_device_count() >= 1
    return library


def _run(caffe: CaffeLibrary, gpu: bool, folder: Path) -> dict[str, np.ndarray]:
    folder.mkdir()
    (folder / "net.prototxt").write_text(NET)
    (folder / "solver.prototxt").write_text(SOLVER.format(prefix=folder / "snap", net=folder / "net.prototxt"))
    if gpu:
        caffe.set_device(0)
        caffe.set_mode_gpu()
    else:
        caffe.set_mode_cpu()
    caffe.set_random_seed(3)
    x, y = _inputs(2)
    out: dict[str, np.ndarray] = {}
    with GlogTap(folder / "caffe.log"):
        solver = caffe.get_solver(str(folder / "solver.prototxt"))
        net = solver.net
        net.blobs["data"].data[...] = x
        net.blobs["label"].data[...] = y
        net.clear_param_diffs()
        net.forward()
        net.backward()
        out["fc"] = net.blobs["fc"].data.copy()
        out["conv diff"] = net.params["conv"][0].diff.copy()
        solver.step(3)
        out["conv after 3 steps"] = net.params["conv"][0].data.copy()
        out["fc after 3 steps"] = net.params["fc"][0].data.copy()
    caffe.set_mode_cpu()
    return out


def test_caffe_on_the_gpu_agrees_with_caffe_on_the_cpu(caffe: CaffeLibrary, tmp_path: Path) -> None:
    cpu, gpu = _run(caffe, False, tmp_path / "cpu"), _run(caffe, True, tmp_path / "gpu")
    for name, want in cpu.items():
        scale = max(float(np.abs(want).max()), 1e-6)
        np.testing.assert_allclose(gpu[name], want, rtol=1e-4, atol=1e-4 * scale, err_msg=name)
