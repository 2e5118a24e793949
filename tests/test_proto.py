"""Our schema against real Caffe's files: same bytes back, same text, same field numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lmdb
import numpy as np
from google.protobuf import text_format

from squeezecaffe.proto import pb, read_text, set_float_data
from tests.conftest import FIXTURES, REPO

PROTO_DIR = REPO / "src" / "squeezecaffe" / "proto"


def test_generated_bindings_match_the_schema(tmp_path: Path) -> None:
    """sqcaffe_pb2.py is committed; regenerating it from sqcaffe.proto must give the same file."""
    out = tmp_path / "gen"
    out.mkdir()
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{REPO / 'src'}", f"--python_out={out}", f"--pyi_out={out}",
         str(PROTO_DIR / "sqcaffe.proto")],
        check=True,
    )
    for name in ("sqcaffe_pb2.py", "sqcaffe_pb2.pyi"):
        fresh = (out / "squeezecaffe" / "proto" / name).read_text()
        committed = (PROTO_DIR / name).read_text()
        assert fresh == committed, f"{name} is stale: run 'make proto' and commit the result"


def test_package_is_not_caffe() -> None:
    assert pb.DESCRIPTOR.package == "sqcaffe"
    assert pb.NetParameter.DESCRIPTOR.full_name == "sqcaffe.NetParameter"


def test_caffe_field_numbers_and_defaults() -> None:
    """Spot checks of facts that make files interchangeable (numbers and defaults of Caffe's schema)."""
    layer = pb.LayerParameter.DESCRIPTOR.fields_by_name
    expected = {"name": 1, "type": 2, "bottom": 3, "top": 4, "loss_weight": 5, "param": 6, "blobs": 7,
                "include": 8, "exclude": 9, "phase": 10, "transform_param": 100, "loss_param": 101,
                "accuracy_param": 102, "concat_param": 104, "convolution_param": 106, "data_param": 107,
                "dropout_param": 108, "eltwise_param": 110, "inner_product_param": 117, "pooling_param": 121,
                "relu_param": 123, "softmax_param": 125, "flatten_param": 135, "batch_norm_param": 139,
                "scale_param": 142, "input_param": 143}
    assert {k: layer[k].number for k in expected} == expected
    assert pb.NetParameter.DESCRIPTOR.fields_by_name["layer"].number == 100
    solver = pb.SolverParameter.DESCRIPTOR.fields_by_name
    assert {k: solver[k].number for k in ("net", "base_lr", "lr_policy", "type", "iter_size", "snapshot_prefix")} == {
        "net": 24, "base_lr": 5, "lr_policy": 8, "type": 40, "iter_size": 36, "snapshot_prefix": 15}
    assert pb.BatchNormParameter().moving_average_fraction == __import__("pytest").approx(0.999)
    assert pb.BatchNormParameter().eps == __import__("pytest").approx(1e-5)
    assert pb.ConvolutionParameter().bias_term is True
    assert pb.PoolingParameter().stride == 1
    assert pb.LossParameter().normalization == pb.LossParameter.VALID
    assert pb.SolverParameter().type == "SGD"
    assert pb.SolverParameter().solver_mode == pb.SolverParameter.GPU
    assert pb.NetState().phase == pb.TEST


def _roundtrip_binary(path: Path, message_type) -> None:
    raw = path.read_bytes()
    msg = message_type()
    msg.ParseFromString(raw)
    assert msg.SerializeToString() == raw, f"{path.name} does not re-serialize byte for byte"


def test_real_caffe_binaries_roundtrip_byte_for_byte() -> None:
    _roundtrip_binary(FIXTURES / "layers" / "zoo.caffemodel", pb.NetParameter)
    _roundtrip_binary(FIXTURES / "solver" / "tiny_iter_10.caffemodel", pb.NetParameter)
    _roundtrip_binary(FIXTURES / "solver" / "tiny_iter_10.solverstate", pb.SolverState)
    _roundtrip_binary(FIXTURES / "lmdb" / "raw_mean.binaryproto", pb.BlobProto)
    state = pb.SolverState()
    state.ParseFromString((FIXTURES / "solver" / "tiny_iter_10.solverstate").read_bytes())
    assert state.iter == 10 and state.learned_net == "tiny_iter_10.caffemodel"
    assert len(state.history) == 8  # conv w, bn x3, scale x2, ip w, ip b


def test_real_caffe_lmdb_datums_roundtrip() -> None:
    env = lmdb.open(str(FIXTURES / "lmdb" / "raw_lmdb"), readonly=True, lock=False)
    with env.begin() as txn:
        records = list(txn.cursor())
    assert len(records) == 24
    for _key, value in records:
        datum = pb.Datum()
        datum.ParseFromString(value)
        assert datum.SerializeToString() == value
        assert len(datum.data) == datum.channels * datum.height * datum.width
    assert records[0][0] == b"00000000_cls0/img 0.png"


def test_real_caffe_prototxt_parses_and_text_roundtrips() -> None:
    net = read_text(FIXTURES / "layers" / "zoo.prototxt", pb.NetParameter)
    assert [la.type for la in net.layer][:3] == ["Input", "Convolution", "BatchNorm"]
    text = text_format.MessageToString(net)
    again = pb.NetParameter()
    text_format.Parse(text, again)
    assert again == net
    solver = read_text(FIXTURES / "solver" / "solver.prototxt", pb.SolverParameter)
    assert solver.type == "Nesterov" and solver.lr_policy == "poly" and solver.iter_size == 2
    assert solver.solver_mode == pb.SolverParameter.CPU


def test_set_float_data_writes_the_same_message_as_the_repeated_field() -> None:
    """The packed-bytes fast path against protobuf's own repeated-field encoding, odd values and sizes included."""
    rng = np.random.default_rng(0)
    odd = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, 3.4028235e38], dtype=np.float32)
    for values in (odd, rng.standard_normal(1000).astype(np.float32), np.zeros(0, np.float32),
                   rng.standard_normal(17).astype(np.float64)):  # float64 input is stored as float32, like the list
        slow = pb.BlobProto(num=1, channels=len(values))
        slow.data.extend(values.astype(np.float32).tolist())
        fast = pb.BlobProto(num=1, channels=len(values))
        fast.data.extend([7.0, 8.0])  # replaced, not appended to
        set_float_data(fast, values)
        assert fast.SerializeToString() == slow.SerializeToString()
        assert np.array_equal(np.asarray(fast.data, np.float32), values.astype(np.float32), equal_nan=True)
