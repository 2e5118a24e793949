"""`--gpu-transform`: uint8 batches transformed on the device equal the CPU DataTransformer's, element for element.

Run here on the CPU device (CI has no GPU): the same code path, moved with `.to(device)`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from squeezecaffe.engines.torchcaffe.loader import DataLayerLoader
from squeezecaffe.engines.torchcaffe.options import EngineOptions
from squeezecaffe.engines.torchcaffe.solver import Solver
from squeezecaffe.proto import parse_text, pb
from tests.datasets import small_data_dir


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    return small_data_dir(tmp_path_factory.mktemp("devtf"), per_class=8, size=(15, 13))


def _layer(db: Path, transform: str, split: str = "train") -> pb.LayerParameter:
    return parse_text(f'name: "data" type: "Data" top: "data" top: "label" transform_param {{ {transform} }} '
                      f'data_param {{ source: "{db / (split + "_lmdb")}" batch_size: 5 backend: LMDB }}',
                      pb.LayerParameter)


@pytest.mark.parametrize("phase, transform", [
    (pb.TRAIN, 'crop_size: 9 mirror: true scale: 0.0078125 mean_file: "MEAN"'),
    (pb.TRAIN, "crop_size: 11 mirror: true mean_value: 104 mean_value: 117 mean_value: 123"),
    (pb.TRAIN, "mirror: true scale: 0.5"),
    (pb.TEST, 'crop_size: 9 mirror: true mean_file: "MEAN"'),  # TEST: centre crop (mirror as Caffe: either phase)
    (pb.TEST, "mean_value: 100 scale: 0.25"),
])
def test_device_batches_equal_cpu_batches(db: Path, phase: int, transform: str) -> None:
    lp = _layer(db, transform.replace("MEAN", str(db / "mean.binaryproto")))
    cpu = DataLayerLoader(lp, phase, seed=7)
    dev = DataLayerLoader(lp, phase, seed=7, device_transform="cpu")
    assert dev.shape == cpu.shape
    for _ in range(6):  # past the end of the 18 records: wrapping included
        (x1, y1), (x2, y2) = cpu.next_batch(), dev.next_batch()
        assert x2.dtype == torch.float32 and torch.equal(x1, x2) and torch.equal(y1, y2)
    # the batches compared covered both kinds of draw where there are any
    draws = [dev.loader.dataset[p] for p in range(30)]
    assert {d[3] for d in draws} == ({False, True} if "mirror: true" in transform else {False})
    offsets = {d[2] for d in draws}
    assert len(offsets) > 1 if phase == pb.TRAIN and "crop_size" in transform else len(offsets) == 1


def test_training_with_the_device_transform_is_the_same_run(db: Path, tmp_path: Path) -> None:
    net = tmp_path / "net.prototxt"
    net.write_text(f'''layer {{ name: "data" type: "Data" top: "data" top: "label"
  transform_param {{ crop_size: 11 mirror: true scale: 0.0078125 mean_file: "{db / "mean.binaryproto"}" }}
  data_param {{ source: "{db / "train_lmdb"}" batch_size: 4 backend: LMDB }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param {{ num_output: 3
  weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }}
''')
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{net}" type: "Nesterov" base_lr: 0.05 momentum: 0.9 lr_policy: "fixed" max_iter: 8\n')
    losses = {}
    for flag in (False, True):
        s = Solver.from_file(solver, options=EngineOptions(gpu_transform=flag), seed=3)
        trace: list[float] = []
        s.step(8, lambda st, trace=trace: trace.append(st.loss))
        losses[flag] = trace
    assert losses[True] == losses[False]


def test_device_transform_needs_one_image_size() -> None:
    import numpy as np

    from squeezecaffe.engines.torchcaffe.loader import _collate_raw
    from squeezecaffe.errors import UserError

    samples = [(np.zeros((3, 10, 10), np.uint8), 0, (0, 0), False), (np.zeros((3, 12, 12), np.uint8), 1, (0, 0), True)]
    with pytest.raises(UserError, match="--gpu-transform needs one image size"):
        _collate_raw(samples)
