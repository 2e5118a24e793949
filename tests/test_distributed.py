"""Data-parallel training (torchrun, gloo on the CPU): 2 processes x batch 4 == 1 process x batch 8."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from squeezecaffe.caffe_rules.blobs import blob_values, read_caffemodel
from squeezecaffe.cli import main
from squeezecaffe.engines.torchcaffe.loader import _SequentialBatches
from squeezecaffe.engines.torchcaffe.options import EngineOptions
from squeezecaffe.engines.torchcaffe.solver import Solver
from squeezecaffe.engines.torchcaffe.weights import save_caffemodel
from squeezecaffe.train.logs import read_log
from tests.datasets import small_data_dir

# No BatchNorm: each rank would normalise over its own half batch (as in Caffe), which is not the double batch.
NET = """name: "ddp"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.0078125 mean_value: 128 mirror: true crop_size: 12 }
  data_param { source: "DATA/train_lmdb" batch_size: BATCH backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.0078125 mean_value: 128 crop_size: 12 }
  data_param { source: "DATA/val_lmdb" batch_size: 5 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 6 kernel_size: 3 weight_filler { type: "msra" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""
SOLVER = ('net: "NET" type: "Nesterov" base_lr: 0.05 lr_policy: "poly" power: 1.0 momentum: 0.9 '
          'weight_decay: 0.0005 iter_size: 2 max_iter: 12 display: 1 test_iter: 1 test_interval: 1000\n')


def test_sampler_interleaves_records_like_caffe() -> None:
    ranks = [_SequentialBatches(3, start=6, rank=r, world=2) for r in range(2)]
    first = [next(iter(s)) for s in ranks]
    assert first == [[6, 8, 10], [7, 9, 11]]  # together: the 6 consecutive records one process would take
    assert ranks[0].stride == 6


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory) -> Path:
    return small_data_dir(tmp_path_factory.mktemp("ddp"), per_class=16, size=(14, 14))


def _solver(folder: Path, data: Path, batch: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "net.prototxt").write_text(NET.replace("DATA", str(data)).replace("BATCH", str(batch)))
    (folder / "solver.prototxt").write_text(SOLVER.replace("NET", str(folder / "net.prototxt")))
    return folder / "solver.prototxt"


@pytest.mark.slow
def test_two_processes_equal_one_with_double_batch(ddp_data: Path, tmp_path: Path) -> None:
    single = tmp_path / "single"
    solver1 = _solver(single, ddp_data, 8)
    weights = tmp_path / "start.caffemodel"
    # the same starting weights for both: one solver's fillers, saved
    save_caffemodel(Solver.from_file(solver1, options=EngineOptions(), seed=1).train_net, weights)
    common = ["--engine", "torch", "--workers", "0", "--quiet", "--weights", str(weights), "--seed", "3"]
    assert main(["train", "--solver", str(solver1), "--run-dir", str(single / "run"), *common]) == 0

    double = tmp_path / "double"
    solver2 = _solver(double, ddp_data, 4)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--standalone", "-m", "squeezecaffe",
                             "train", "--solver", str(solver2), "--run-dir", str(double / "run"), *common],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    one, two = read_log(single / "run" / "log.csv"), read_log(double / "run" / "log.csv")
    assert [r["NumIters"] for r in one] == [r["NumIters"] for r in two] and len(one) >= 12
    for a, b in zip(one, two, strict=True):
        key = "loss" if a["Phase"] == "train" else "val_loss"
        # abs: a loss near 0 is -log(p) for p near 1, which float32 resolves to ~6e-8 whatever the engine
        assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-5, abs=1e-6), (a, b)
    final = sorted((single / "run" / "snapshots").glob("*.caffemodel"))[-1].name
    m1 = read_caffemodel(single / "run" / "snapshots" / final)
    m2 = read_caffemodel(double / "run" / "snapshots" / final)  # written once, by rank 0
    for l1, l2 in zip(m1.layer, m2.layer, strict=True):
        for b1, b2 in zip(l1.blobs, l2.blobs, strict=True):
            np.testing.assert_allclose(blob_values(b2), blob_values(b1), rtol=1e-5, atol=1e-7)
    assert '"processes": 2' in (double / "run" / "run.json").read_text()


@pytest.mark.slow
def test_a_generated_model_under_torchrun_runs_the_epochs_asked_for(ddp_data: Path, tmp_path: Path) -> None:
    """`train MODEL --epochs 2` on 2 ranks: 2 epochs of the global batch, not 2 x 2 (the solver counts both ranks)."""
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--standalone", "-m", "squeezecaffe",
                             "train", "cifar_resnet_1111", "--data", str(ddp_data), "--engine", "torch",
                             "--batch-size", "4", "--epochs", "2", "--workers", "0", "--quiet",
                             "--run-dir", str(run_dir)],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    val = [r for r in read_log(run_dir / "log.csv") if r["Phase"] == "val"]
    per_epoch = -(-36 // (4 * 2))  # 36 training images, global batch 8
    assert [r["Epoch"] for r in val] == ["1", "2"] and int(val[-1]["NumIters"]) == 2 * per_epoch
