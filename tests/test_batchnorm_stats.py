"""BatchNorm statistics re-estimated at the current weights (engines/torchcaffe/batchnorm_stats.py): the sums
are the layer's own rule over exactly the latest training batches, training itself is untouched, and a run
validates (and snapshots) with the fresh statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from squeezecaffe.caffe_rules.blobs import blob_values, read_caffemodel
from squeezecaffe.cli import main
from squeezecaffe.engines.torchcaffe.adapter import TorchEngine
from squeezecaffe.engines.torchcaffe.net import CaffeNet, DataOptions
from squeezecaffe.engines.torchcaffe.options import EngineOptions
from squeezecaffe.proto import pb, read_text
from squeezecaffe.train.logs import read_log
from tests.conftest import TRAIN
from tests.datasets import small_data_dir

FRACTION = 0.9
BATCH = 4


def _net(data: Path) -> str:
    """Data -> conv -> BatchNorm (not in place, so its input blob stays readable) -> ip -> loss."""
    return f"""
name: "bn_probe"
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
  data_param {{ source: "{data / 'train_lmdb'}" batch_size: {BATCH} backend: LMDB }}
  transform_param {{ scale: 0.00390625 mirror: true crop_size: 12 }} }}
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
  data_param {{ source: "{data / 'val_lmdb'}" batch_size: {BATCH} backend: LMDB }}
  transform_param {{ scale: 0.00390625 crop_size: 12 }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: 5 kernel_size: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "bn" type: "BatchNorm" bottom: "conv" top: "bn" batch_norm_param {{ moving_average_fraction: {FRACTION} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "bn" top: "bn" }}
layer {{ name: "ip" type: "InnerProduct" bottom: "bn" top: "ip"
  inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
"""


@pytest.fixture
def solver_path(tmp_path: Path) -> Path:
    data = small_data_dir(tmp_path, per_class=8, size=(16, 16))
    (tmp_path / "net.prototxt").write_text(_net(data))
    path = tmp_path / "solver.prototxt"
    path.write_text('net: "net.prototxt" base_lr: 0.05 momentum: 0.9 lr_policy: "fixed" max_iter: 100 '
                    'test_iter: 1 test_interval: 1000 type: "Nesterov" weight_decay: 0.0005')
    return path


def _engine(solver_path: Path) -> TorchEngine:
    return TorchEngine(solver_path, EngineOptions(workers=0), seed=3, snapshot_prefix=str(solver_path.parent / "s"))


def _bn(engine: TorchEngine) -> list[torch.Tensor]:
    net = engine.solver.train_net
    return list(net.layers[net.layer_names.index("bn")].blobs)


def test_the_sums_are_the_layers_rule_over_the_latest_batches(solver_path: Path) -> None:
    engine = _engine(solver_path)
    engine.step(3)  # 12 records read: positions 0-11 (18 training records, so the next pass wraps)
    assert engine.reestimate_batchnorm(2) == 2 * BATCH
    mean_sum, var_sum, factor = (b.detach().clone() for b in _bn(engine))

    # independently: the conv outputs of records 4-7 and 8-11 with the same crops and mirrors, at these weights
    param = read_text(solver_path.parent / "net.prototxt", pb.NetParameter)
    probe = CaffeNet(param, "TRAIN", where="probe", base_dir=solver_path.parent, data=DataOptions(seed=3))
    probe.share_weights_from(engine.solver.train_net)
    saved = [b.detach().clone() for b in _bn(engine)]
    probe.seek_data(4)
    means, variances = [], []
    with torch.no_grad():
        for _ in range(2):
            conv = probe({}).blobs["conv"].double()
            m = conv.shape[0] * conv.shape[2] * conv.shape[3]
            means.append(conv.mean(dim=(0, 2, 3)))
            variances.append(conv.var(dim=(0, 2, 3), unbiased=False) * m / (m - 1))
    for blob, value in zip(_bn(engine), saved, strict=True):  # the probe's forward folded into the shared sums
        blob.data.copy_(value)
    assert float(factor[0]) == pytest.approx(FRACTION + 1)
    np.testing.assert_allclose(mean_sum.double(), FRACTION * means[0] + means[1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(var_sum.double(), FRACTION * variances[0] + variances[1], rtol=1e-5, atol=1e-7)


def test_reestimation_leaves_training_untouched_and_is_a_function_of_the_iteration(solver_path: Path) -> None:
    plain, checked = _engine(solver_path), _engine(solver_path)
    plain.step(5)
    checked.step(3)
    checked.reestimate_batchnorm(3)
    checked.step(2)
    for (name, i, a, _, _), (_, _, b, _, _) in zip(plain.solver.train_net.learnable(),
                                                    checked.solver.train_net.learnable(), strict=True):
        if name != "bn":  # every learned weight follows the same trajectory
            assert torch.equal(a, b), f"{name}/{i}"
    plain.reestimate_batchnorm(3)
    checked.reestimate_batchnorm(3)
    for a, b in zip(_bn(plain), _bn(checked), strict=True):  # same iteration, same records: same statistics
        assert torch.equal(a, b)
    assert plain.reestimate_batchnorm(0) == 0


def test_a_net_without_accumulating_batchnorm_has_nothing_to_reestimate(solver_path: Path) -> None:
    net = solver_path.parent / "net.prototxt"
    net.write_text(net.read_text().replace(f"moving_average_fraction: {FRACTION}", "use_global_stats: true"))
    engine = _engine(solver_path)
    before = [b.detach().clone() for b in _bn(engine)]
    assert engine.reestimate_batchnorm(100) == 0
    assert all(torch.equal(a, b) for a, b in zip(before, _bn(engine), strict=True))


@pytest.mark.slow
def test_a_run_validates_and_snapshots_with_fresh_statistics(data: Path, tmp_path: Path, capsys, no_caffe) -> None:
    """Same weights as a run without re-estimation (BatchNorm's sums aside); the sums in the snapshot are the
    re-estimated ones (factor of a sum started afresh), and the log says so once. --bn-images 64 on 120 training
    records reads a quarter of them (BN_EPOCH_SHARE), rounded up to whole batches: 2 batches of 16."""
    runs = {}
    for images in ("0", "64"):
        run = tmp_path / f"bn{images}"
        assert main([*TRAIN[:4], "--epochs", "2", *TRAIN[6:], "--data", str(data), "--bn-images", images,
                     "--run-dir", str(run)]) == 0
        runs[images] = run
    out = capsys.readouterr().out
    assert out.count("BatchNorm statistics re-estimated over the latest 32 training images") == 1
    assert json.loads((runs["64"] / "config.json").read_text())["bn_images"] == 64
    a, b = (read_caffemodel(r / "snapshots" / "cifar_resnet_1111_iter_16.caffemodel") for r in runs.values())
    differ = []
    for la, lb in zip(a.layer, b.layer, strict=True):
        for i, (ba, bb) in enumerate(zip(la.blobs, lb.blobs, strict=True)):
            if la.type == "BatchNorm":
                differ.append(not np.array_equal(blob_values(ba), blob_values(bb)))
                if i == 2:  # 2 batches of 16 folded into cleared sums: 1 + f
                    fraction = la.batch_norm_param.moving_average_fraction
                    assert blob_values(bb)[0] == pytest.approx(1 + fraction, rel=1e-6)
            else:
                assert np.array_equal(blob_values(ba), blob_values(bb)), f"{la.name}/{i}"
    assert differ and all(differ)
    top1 = {k: [float(r["val_top1"]) for r in read_log(run / "log.csv") if r["Phase"] == "val"]
            for k, run in runs.items()}
    assert len(top1["0"]) == len(top1["64"]) == 2
