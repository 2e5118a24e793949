"""The CUDA path against the CPU engine (marker `gpu`: `make test-gpu`; skipped where no CUDA device is present).

- 50 Nesterov steps of fullbypass8 on CUDA (fp32, deterministic kernels, TF32 off) track the CPU engine's losses
  within 1e-4 relative;
- `--gpu-transform` and `--data-in-memory` on CUDA give the CPU loader's batches exactly;
- data-parallel training with 2 ranks sharing the one GPU (gloo) equals 1 rank with the double batch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from squeezecaffe.cli import main
from squeezecaffe.engines.torchcaffe.loader import DataLayerLoader
from squeezecaffe.engines.torchcaffe.options import EngineOptions
from squeezecaffe.engines.torchcaffe.solver import Solver
from squeezecaffe.engines.torchcaffe.weights import save_caffemodel
from squeezecaffe.proto import pb
from squeezecaffe.train.logs import read_log
from tests.datasets import small_data_dir
from tests.test_device_transform import _layer
from tests.test_distributed import _solver

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")]


@pytest.fixture(scope="module")
def gpu_data(tmp_path_factory) -> Path:
    return small_data_dir(tmp_path_factory.mktemp("gpu"), per_class=32, size=(32, 32))


@pytest.fixture
def deterministic():
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
     torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) = saved


def test_cuda_tracks_the_cpu_engine_for_50_steps(gpu_data: Path, tmp_path: Path, deterministic) -> None:
    assert main(["gen", "fullbypass8", "--out", str(tmp_path / "net"), "--data", str(gpu_data), "--batch-size", "16",
                 "--epochs", "20", "--recipe", "registry", "--solver-set", "base_lr=0.01"]) == 0
    solver_path = tmp_path / "net" / "solver.prototxt"
    losses = {}
    start = tmp_path / "start.caffemodel"
    for device in ("cpu", "cuda"):
        solver = Solver.from_file(solver_path, options=EngineOptions(device=device, workers=0), seed=1)
        if device == "cpu":
            save_caffemodel(solver.train_net, start)
        solver.load_weights(start)
        trace: list = []
        solver.step(50, lambda s, trace=trace: trace.append(s.loss))
        losses[device] = np.array([float(v) for v in trace])
    np.testing.assert_allclose(losses["cuda"], losses["cpu"], rtol=1e-4)


@pytest.mark.parametrize("phase, transform", [
    (pb.TRAIN, 'crop_size: 25 mirror: true scale: 0.0078125 mean_file: "MEAN"'),
    (pb.TEST, "mean_value: 100 scale: 0.25"),
])
@pytest.mark.parametrize("mode", ["gpu_transform", "in_memory"])
def test_cuda_batches_equal_the_cpu_loader(gpu_data: Path, phase: int, transform: str, mode: str) -> None:
    lp = _layer(gpu_data, transform.replace("MEAN", str(gpu_data / "mean.binaryproto")))
    cpu = DataLayerLoader(lp, phase, seed=7)
    dev = DataLayerLoader(lp, phase, seed=7, device_transform="cuda", in_memory=mode == "in_memory")
    for _ in range(30):  # past the end of the database: wrapping included
        (x1, y1), (x2, y2) = cpu.next_batch(), dev.next_batch()
        assert x2.device.type == "cuda"
        assert torch.equal(x1, x2.cpu()) and torch.equal(y1, y2.cpu())


def test_two_ranks_on_one_gpu_equal_one_rank_with_double_batch(gpu_data: Path, tmp_path: Path) -> None:
    single = tmp_path / "single"
    solver1 = _solver(single, gpu_data, 8)
    weights = tmp_path / "start.caffemodel"
    save_caffemodel(Solver.from_file(solver1, options=EngineOptions(), seed=1).train_net, weights)
    common = ["--engine", "torch", "--device", "cuda", "--workers", "0", "--quiet", "--weights", str(weights),
              "--seed", "3"]
    assert main(["train", "--solver", str(solver1), "--run-dir", str(single / "run"), *common]) == 0
    double = tmp_path / "double"
    solver2 = _solver(double, gpu_data, 4)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--standalone", "-m", "squeezecaffe",
                             "train", "--solver", str(solver2), "--run-dir", str(double / "run"), *common],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = read_log(single / "run" / "log.csv"), read_log(double / "run" / "log.csv")
    assert [r["NumIters"] for r in one] == [r["NumIters"] for r in two]
    for a, b in zip(one, two, strict=True):
        key = "loss" if a["Phase"] == "train" else "val_loss"
        assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-4), (a, b)
