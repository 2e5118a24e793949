"""`--gpu-transform` and `--data-in-memory`: uint8 batches transformed on the device, and batches gathered
from a database held in device memory, equal the CPU DataTransformer's, element for element; and a
training iteration never waits for the device.

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
    for flags in ({}, {"gpu_transform": True}, {"data_in_memory": True}):
        s = Solver.from_file(solver, options=EngineOptions(**flags), seed=3)
        if flags.get("data_in_memory"):
            assert s.train_net.loaders["data"].loader is None  # no DataLoader, no workers: the tensor in memory
        trace: list[float] = []
        s.step(8, lambda st, trace=trace: trace.append(float(st.loss)))
        losses[tuple(flags)] = trace
    assert losses[("gpu_transform",)] == losses[()] == losses[("data_in_memory",)]


def test_device_transform_needs_one_image_size() -> None:
    import numpy as np

    from squeezecaffe.engines.torchcaffe.loader import _collate_raw
    from squeezecaffe.errors import UserError

    samples = [(np.zeros((3, 10, 10), np.uint8), 0, (0, 0), False), (np.zeros((3, 12, 12), np.uint8), 1, (0, 0), True)]
    with pytest.raises(UserError, match="--gpu-transform needs one image size"):
        _collate_raw(samples)


@pytest.mark.parametrize("phase, transform", [
    (pb.TRAIN, 'crop_size: 9 mirror: true scale: 0.0078125 mean_file: "MEAN"'),
    (pb.TEST, "crop_size: 11 mean_value: 104 mean_value: 117 mean_value: 123"),
])
def test_in_memory_batches_equal_loader_batches(db: Path, phase: int, transform: str) -> None:
    lp = _layer(db, transform.replace("MEAN", str(db / "mean.binaryproto")))
    for rank, world in ((0, 1), (1, 2)):
        cpu = DataLayerLoader(lp, phase, seed=7, workers=1, rank=rank, world=world)
        mem = DataLayerLoader(lp, phase, seed=7, device_transform="cpu", in_memory=True, rank=rank, world=world)
        assert mem.shape == cpu.shape and len(mem) == len(cpu) == 18
        assert mem.memory.pixels.dtype == torch.uint8 and tuple(mem.memory.pixels.shape) == (18, 3, 15, 13)
        for step in range(7):  # past the end of the 18 records: wrapping included
            if step == 4:
                cpu.seek(41)
                mem.seek(41)
            (x1, y1), (x2, y2) = cpu.next_batch(), mem.next_batch()
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
            assert mem.position == cpu.position


def test_in_memory_database_is_decoded_once_and_freed_with_its_last_loader(db: Path) -> None:
    """The BatchNorm statistics net reads the training database as the training net does: one decoded copy."""
    import gc

    from squeezecaffe.engines.torchcaffe import loader

    lp = _layer(db, "crop_size: 9 mirror: true")
    first = DataLayerLoader(lp, pb.TRAIN, seed=1, device_transform="cpu", in_memory=True)
    second = DataLayerLoader(lp, pb.TRAIN, seed=2, device_transform="cpu", in_memory=True)
    val = DataLayerLoader(_layer(db, "crop_size: 9", "val"), pb.TEST, device_transform="cpu", in_memory=True)
    assert second.memory.pixels is first.memory.pixels and val.memory.pixels is not first.memory.pixels
    (x1, _), (x2, _) = first.next_batch(), second.next_batch()
    assert not torch.equal(x1, x2)  # the crops and mirrors stay each loader's own (seeds 1 and 2)
    del first, second, val, x1, x2
    gc.collect()
    assert not any(key[0].startswith(str(db.resolve())) for key in loader._DECODED)


def test_closing_a_loader_ends_its_worker_processes(db: Path) -> None:
    """Workers persist while a loader lives; a run's end closes its nets' loaders (Trainer.run), so a process that
    trains several runs one after another does not keep every earlier run's workers."""
    import multiprocessing

    before = set(multiprocessing.active_children())
    lp = _layer(db, "crop_size: 9 mirror: true")
    loader = DataLayerLoader(lp, pb.TRAIN, seed=1, workers=2)
    loader.next_batch()
    assert len(set(multiprocessing.active_children()) - before) == 2
    loader.close()
    assert set(multiprocessing.active_children()) - before == set()
    with pytest.raises(RuntimeError, match="loader was closed"):
        loader.next_batch()


def test_in_memory_dataset_needs_one_image_size(tmp_path: Path) -> None:
    import cv2
    import numpy as np

    from squeezecaffe.data_tools.convert import ConvertOptions, build_lmdb
    from squeezecaffe.errors import UserError

    for c, size in enumerate([(10, 10), (12, 12)]):
        (tmp_path / "src" / f"c{c}").mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "src" / f"c{c}" / "a.png"), np.full((*size, 3), 50 * c, np.uint8))
    build_lmdb(tmp_path / "src", tmp_path / "data", ConvertOptions(encoded=True, progress=False, jobs=1), val_fraction=0)
    lp = _layer(tmp_path / "data", "mirror: false")
    with pytest.raises(UserError, match=r"--data-in-memory needs one image size, but record 1 of .* is 3x12x12"):
        DataLayerLoader(lp, pb.TRAIN, device_transform="cpu", in_memory=True)


def test_an_iteration_never_waits_for_the_device(db: Path, tmp_path: Path, monkeypatch) -> None:
    """No tensor is read back on the host inside Solver.step: every such read (item, float, int, bool,
    tolist, numpy) is a device sync on a GPU. Losses and outputs come out as device tensors."""
    from squeezecaffe.engines.torchcaffe.solver import read_scalars

    net = tmp_path / "net.prototxt"
    net.write_text(f'''layer {{ name: "data" type: "Data" top: "data" top: "label"
  transform_param {{ crop_size: 11 mirror: true mean_file: "{db / "mean.binaryproto"}" }}
  data_param {{ source: "{db / "train_lmdb"}" batch_size: 4 backend: LMDB }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param {{ num_output: 4
  kernel_size: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }}
layer {{ name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param {{ bias_term: true }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
layer {{ name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param {{ pool: AVE global_pooling: true }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param {{ num_output: 3
  weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }}
layer {{ name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc" }}
''')
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{net}" type: "Nesterov" base_lr: 0.05 momentum: 0.9 lr_policy: "poly" power: 1 '
                      'max_iter: 10 clip_gradients: 1 iter_size: 2 weight_decay: 0.001\n')
    s = Solver.from_file(solver, options=EngineOptions(data_in_memory=True), seed=3)
    s.step(1)  # warm-up outside the watch (first-call set-up may read shapes)
    reads: list[str] = []
    for name in ("item", "__float__", "__int__", "__bool__", "tolist", "numpy"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _n=name, _o=original, **k: reads.append(_n) or _o(self, *a, **k))
    stats = []
    s.step(5, stats.append)
    monkeypatch.undo()
    assert reads == [], f"host reads inside the iteration: {sorted(set(reads))}"
    assert all(isinstance(st.loss, torch.Tensor) and isinstance(st.outputs["acc"], torch.Tensor) for st in stats)
    values = read_scalars([st.loss for st in stats] + [0.5])
    assert len(values) == 6 and values[-1] == 0.5 and all(isinstance(v, float) and v > 0 for v in values)
