"""Caffe's DataTransformer semantics and the Data-layer loader over real LMDBs; device options on CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from squeezecaffe.data_tools.convert import ConvertOptions, build_lmdb
from squeezecaffe.data_tools.lmdb_io import LmdbReader
from squeezecaffe.data_tools.transform import DataTransformer
from squeezecaffe.engines.torchcaffe.fillers import fill_net
from squeezecaffe.engines.torchcaffe.loader import DataLayerLoader
from squeezecaffe.engines.torchcaffe.net import CaffeNet, DataOptions
from squeezecaffe.engines.torchcaffe.options import EngineOptions
from squeezecaffe.errors import UserError
from squeezecaffe.proto import parse_text, pb, write_binary
from tests.datasets import write_class_folders


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("engine_data")
    src = write_class_folders(root / "images", classes=3, per_class=5, size=(10, 12))
    build_lmdb(src, root / "raw", ConvertOptions(jobs=1, progress=False, shuffle="all"), val_fraction=0)
    build_lmdb(src, root / "enc", ConvertOptions(jobs=1, progress=False, encoded=True, shuffle="all"), val_fraction=0)
    return root


def transform(text: str, phase: int, base_dir: Path | None = None) -> DataTransformer:
    return DataTransformer(parse_text(text, pb.TransformationParameter), phase, base_dir=base_dir)


def test_test_phase_centre_crop_mean_file_at_the_crop_offset_and_scale(tmp_path: Path):
    img = np.random.default_rng(0).integers(0, 256, (3, 10, 12), dtype=np.uint8)
    mean = np.random.default_rng(1).uniform(0, 255, (3, 10, 12)).astype(np.float32)
    blob = pb.BlobProto(num=1, channels=3, height=10, width=12)
    blob.data.extend(mean.ravel().tolist())
    write_binary(tmp_path / "mean.binaryproto", blob)
    t = transform('crop_size: 6 mean_file: "mean.binaryproto" scale: 0.5', pb.TEST, tmp_path)
    out = t(img, None)
    h0, w0 = (10 - 6) // 2, (12 - 6) // 2
    want = (img[:, h0 : h0 + 6, w0 : w0 + 6].astype(np.float32) - mean[:, h0 : h0 + 6, w0 : w0 + 6]) * 0.5
    np.testing.assert_array_equal(out, want)


def test_train_phase_random_crop_and_mirror_subtract_the_mean_before_flipping():
    img = np.random.default_rng(0).integers(0, 256, (3, 10, 12), dtype=np.uint8)
    t = transform("crop_size: 8 mirror: true mean_value: 10 mean_value: 20 mean_value: 30", pb.TRAIN)
    crops = set()
    flips = 0
    for seed in range(40):
        out = t(img, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        h0, w0 = int(rng.integers(3)), int(rng.integers(5))
        mirrored = bool(rng.integers(2))
        want = img[:, h0 : h0 + 8, w0 : w0 + 8].astype(np.float32) - np.array([10, 20, 30], np.float32).reshape(3, 1, 1)
        np.testing.assert_array_equal(out, want[:, :, ::-1] if mirrored else want)
        crops.add((h0, w0))
        flips += mirrored
    assert len(crops) > 5 and 5 < flips < 35


def test_one_mean_value_applies_to_every_channel_and_bad_means_are_errors():
    img = np.full((3, 4, 4), 50, np.uint8)
    assert np.all(transform("mean_value: 20", pb.TEST)(img, None) == 30)
    with pytest.raises(UserError, match="2 mean_value for 3 channels"):
        transform("mean_value: 1 mean_value: 2", pb.TEST)(img, None)
    with pytest.raises(UserError, match="crop_size 9 is larger than an image"):
        transform("crop_size: 9", pb.TEST)(img, None)


def data_layer(source: Path, batch: int = 4, crop: int = 8) -> pb.LayerParameter:
    return parse_text(f'name: "data" type: "Data" top: "data" top: "label" transform_param {{ crop_size: {crop} mirror: true }} '
                      f'data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }}', pb.LayerParameter)


def test_batches_are_records_in_database_order_wrapping_around(data_dir: Path):
    db = data_dir / "raw" / "train_lmdb"
    labels = [label for _, label in LmdbReader(db)]
    loader = DataLayerLoader(data_layer(db), pb.TRAIN)
    assert loader.shape == (4, 3, 8, 8)
    seen = [loader.next_batch()[1] for _ in range(5)]  # 20 records from a 15-record database
    got = torch.cat(seen).int().tolist()
    assert got == [labels[i % len(labels)] for i in range(20)]


def test_workers_and_seek_give_the_same_batches(data_dir: Path):
    db = data_dir / "raw" / "train_lmdb"
    single = DataLayerLoader(data_layer(db), pb.TRAIN, seed=3)
    batches = [single.next_batch() for _ in range(6)]
    parallel = DataLayerLoader(data_layer(db), pb.TRAIN, seed=3, workers=2, prefetch=2)
    for data, label in batches:
        d2, l2 = parallel.next_batch()
        assert torch.equal(data, d2) and torch.equal(label, l2)
    parallel.seek(12)  # record 12 = the start of batch 3
    d3, _ = parallel.next_batch()
    assert torch.equal(d3, batches[3][0])
    other_seed = DataLayerLoader(data_layer(db), pb.TRAIN, seed=4).next_batch()[0]
    assert not torch.equal(other_seed, batches[0][0])  # crops and mirrors depend on the seed


def test_encoded_and_raw_databases_give_the_same_batches(data_dir: Path):
    # PNG is lossless, so decoding the stored files gives the raw pixels back
    raw = DataLayerLoader(data_layer(data_dir / "raw" / "train_lmdb"), pb.TEST)
    enc = DataLayerLoader(data_layer(data_dir / "enc" / "train_lmdb"), pb.TEST)
    assert torch.equal(raw.next_batch()[0], enc.next_batch()[0])


def test_data_layer_errors_name_the_layer(data_dir: Path, tmp_path: Path):
    with pytest.raises(UserError, match=r"layer 'data' \(Data\): .*not an LMDB database"):
        DataLayerLoader(data_layer(tmp_path / "nope"), pb.TRAIN)
    with pytest.raises(UserError, match="crop_size 30 is larger than the images"):
        DataLayerLoader(data_layer(data_dir / "raw" / "train_lmdb", crop=30), pb.TRAIN)


NET = '''
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 8 kernel_size: 3 pad: 1
        weight_filler { type: "msra" } } }
layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" }
layer { name: "sc" type: "Scale" bottom: "c" top: "c" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }
layer { name: "pool" type: "Pooling" bottom: "c" top: "p" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "p" top: "y"
        inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
'''


def _run(options: EngineOptions) -> torch.Tensor:
    net = CaffeNet(parse_text(NET, pb.NetParameter), "TRAIN", data=DataOptions())
    fill_net(net, 0)
    options.apply(net)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 3, 12, 12)).astype(np.float32))
    out = net({"x": x}).blobs["y"]
    out.sum().backward()
    assert net.layers[1].blobs[0].grad.dtype == torch.float32  # master weights stay fp32
    return out.detach().float()


def test_channels_last_matches_and_bf16_autocast_stays_close():
    reference = _run(EngineOptions())
    assert torch.allclose(_run(EngineOptions(channels_last=True)), reference, atol=1e-5)
    bf16 = _run(EngineOptions(amp="bf16"))
    assert torch.allclose(bf16, reference, atol=0.1 * float(reference.abs().max()))


def test_cuda_request_without_cuda_is_one_line():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserError, match="CUDA is not available here"):
        EngineOptions(device="cuda").torch_device()
