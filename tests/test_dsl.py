"""The schema-driven layer DSL: routing, enums, and build-time errors that name the culprit."""

from __future__ import annotations

import pytest

from squeezecaffe.caffe_rules.checks import NetRuleError, check_net
from squeezecaffe.netgen.dsl import TYPE_PARAM_FIELD, NetBuilder, NetgenError, make_layer
from squeezecaffe.proto import pb


def test_type_to_param_field_comes_from_the_schema() -> None:
    assert TYPE_PARAM_FIELD["Convolution"] == "convolution_param"
    assert TYPE_PARAM_FIELD["BatchNorm"] == "batch_norm_param"
    assert TYPE_PARAM_FIELD["InnerProduct"] == "inner_product_param"
    assert TYPE_PARAM_FIELD["ReLU"] == "relu_param"
    # Every *_param message field of LayerParameter is reachable without a hand-kept list.
    n_param_fields = sum(1 for f in pb.LayerParameter.DESCRIPTOR.fields
                         if f.name.endswith("_param") and f.name not in ("transform_param", "loss_param"))
    assert len(TYPE_PARAM_FIELD) == n_param_fields + 2  # + Transformation, Loss


def test_keywords_are_routed_to_the_right_messages() -> None:
    layer = make_layer("Convolution", "c", ["x"], ["c"], num_output=8, kernel_size=3, pad=1,
                       weight_filler=dict(type="msra"), param=[dict(lr_mult=1), dict(lr_mult=2, decay_mult=0)])
    assert layer.convolution_param.num_output == 8
    assert list(layer.convolution_param.kernel_size) == [3]
    assert layer.convolution_param.weight_filler.type == "msra"
    assert [p.lr_mult for p in layer.param] == [1, 2]
    pool = make_layer("Pooling", "p", ["c"], ["p"], pool="AVE", global_pooling=True)
    assert pool.pooling_param.pool == pb.PoolingParameter.AVE
    loss = make_layer("SoftmaxWithLoss", "l", ["p", "y"], ["l"], axis=1, normalization="BATCH_SIZE")
    assert loss.softmax_param.axis == 1
    assert loss.loss_param.normalization == pb.LossParameter.BATCH_SIZE
    data = make_layer("Data", "d", [], ["d", "y"], include=dict(phase="TRAIN"), source="x", backend="LMDB",
                      batch_size=4, transform_param=dict(mirror=True, mean_value=[1, 2, 3]))
    assert data.include[0].phase == pb.TRAIN and data.data_param.backend == pb.DataParameter.LMDB
    assert list(data.transform_param.mean_value) == [1, 2, 3]


def test_unknown_keyword_names_layer_and_choices() -> None:
    with pytest.raises(NetgenError, match=r"layer 'c' \(Convolution\): unknown argument 'kernel'.*kernel_size"):
        make_layer("Convolution", "c", ["x"], ["c"], kernel=3)
    with pytest.raises(NetgenError, match="'MEAN' is not one of MAX, AVE, STOCHASTIC"):
        make_layer("Pooling", "p", ["x"], ["p"], pool="MEAN")
    with pytest.raises(NetgenError, match="takes no parameters"):
        make_layer("Split", "s", ["x"], ["a", "b"], axis=1)


def test_builder_rejects_missing_bottoms_and_duplicate_names() -> None:
    n = NetBuilder("t")
    x = n.layer("Input", name="data", shape=dict(dim=[1, 3, 8, 8]))
    n.layer("ReLU", x, name="r", tops=[x])
    with pytest.raises(NetgenError, match="bottom blob 'nope'"):
        n.layer("ReLU", "nope", name="r2")
    with pytest.raises(NetgenError, match=r"layer .r. .* already exists"):
        n.layer("ReLU", x, name="r")


def test_phase_checks_find_duplicate_tops_and_missing_blobs() -> None:
    net = pb.NetParameter()
    net.layer.add(name="a", type="Input", top=["x"]).input_param.shape.add(dim=[1, 1, 2, 2])
    net.layer.add(name="b", type="ReLU", bottom=["x"], top=["y"])
    net.layer.add(name="c", type="ReLU", bottom=["x"], top=["y"])
    with pytest.raises(NetRuleError, match="layer 'c' \\(ReLU\\): top blob 'y' is already produced"):
        check_net(net)
    net2 = pb.NetParameter()
    net2.layer.add(name="d", type="Data", top=["x"]).include.add(phase=pb.TRAIN)
    net2.layer.add(name="r", type="ReLU", bottom=["x"], top=["x"])
    with pytest.raises(NetRuleError, match=r"\(TEST\): layer 'r' \(ReLU\): bottom blob 'x'"):
        check_net(net2)
