"""ONNX export: every registry model runs in onnxruntime with our engine's probabilities (1e-4), Caffe's pooling
rules hold at the edges, BatchNorm folding and a baked-in mean change nothing, and an exported file scores a
database exactly as the model it came from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from squeezecaffe.errors import UserError
from squeezecaffe.evaluation.artifacts import resolve_artifacts
from squeezecaffe.export.onnx_export import ExportOptions, export_onnx, read_onnx_metadata
from squeezecaffe.netgen.registry import MODELS, narrowed
from squeezecaffe.proto import parse_text, pb, write_binary, write_text
from tests.conftest import model_params, random_caffemodel

pytest.importorskip("onnxruntime")


def write_model(tmp_path, deploy: pb.NetParameter, seed: int = 0):
    net_path = write_text(tmp_path / "deploy.prototxt", deploy)
    weights = write_binary(tmp_path / "w.caffemodel", random_caffemodel(deploy, seed))
    return str(weights), str(net_path)


def registry_deploy(name: str, narrow: bool = False) -> pb.NetParameter:
    from squeezecaffe.netgen.builder import build_deploy
    from squeezecaffe.solvers.settings import resolve

    spec = narrowed(MODELS[name]) if narrow else MODELS[name]
    return build_deploy(spec, resolve(spec)[0])


@pytest.mark.parametrize("name", model_params(MODELS))
def test_every_registry_model_matches_our_engine_in_onnxruntime(name, tmp_path):
    weights, net = write_model(tmp_path, registry_deploy(name))
    report = export_onnx(weights, tmp_path / "m.onnx", ExportOptions(check_images=4), net=net)
    assert report.max_difference <= 1e-4
    assert (tmp_path / "m.onnx").stat().st_size == report.bytes
    assert "Conv" in report.ops and "Softmax" in report.ops
    import onnx

    model = onnx.load(str(tmp_path / "m.onnx"))
    assert {o.name for o in model.graph.output} >= {"prob"}
    assert {n.op_type for n in model.graph.node} == set(report.ops)


@pytest.mark.parametrize("name", ["fullbypass8", "cifar_resnet_1111"])
def test_folded_batchnorm_and_dynamic_batch_give_the_same_probabilities(name, tmp_path):
    weights, net = write_model(tmp_path, registry_deploy(name, narrow=True), seed=3)
    report = export_onnx(weights, tmp_path / "f.onnx", ExportOptions(fold_batchnorm=True, dynamic_batch=True,
                                                                     check_images=5), net=net)
    assert report.folded > 0 and "BatchNormalization" not in report.ops and "Mul" not in report.ops
    assert report.max_difference <= 1e-4


def test_std_normalization_and_variants_export(tmp_path):
    """Slice/Power/Concat (per-channel std), a factorized ResNet and a Fire design-space point."""
    from dataclasses import replace

    from squeezecaffe.netgen.builder import build_deploy
    from squeezecaffe.netgen.variants import model_spec
    from squeezecaffe.solvers.settings import resolve

    for i, name in enumerate(["cifar_resnet:blocks=1-1:widths=8-16:bottleneck=0.5",
                              "sq1_final:sr=0.25:pct3x3=0.25"]):
        spec = model_spec(name)
        cfg = replace(resolve(spec)[0], std_value=(60.0, 62.5, 66.7))
        folder = tmp_path / str(i)
        folder.mkdir()
        weights, net = write_model(folder, build_deploy(spec, cfg))
        report = export_onnx(weights, tmp_path / f"{i}.onnx", ExportOptions(check_images=3), net=net)
        assert report.max_difference <= 1e-4
        assert {"Split", "Mul", "Concat"} <= set(report.ops)


POOL_NET = """
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: 3 dim: {h} dim: {w} }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 stride: 1 }} }}
layer {{ name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param {{ pool: {pool} kernel_size: {k} stride: {s} pad: {p} }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param {{ num_output: 5 }} }}
layer {{ name: "prob" type: "Softmax" bottom: "fc" top: "prob" }}
"""


@pytest.mark.parametrize(("pool", "h", "w", "k", "s", "p"), [
    ("MAX", 7, 8, 3, 2, 0), ("MAX", 6, 6, 3, 2, 1), ("MAX", 5, 9, 2, 2, 1), ("MAX", 4, 4, 3, 3, 1),
    ("AVE", 7, 7, 3, 2, 1), ("AVE", 8, 8, 2, 2, 0)])
def test_caffe_pooling_edges_export_exactly(tmp_path, pool, h, w, k, s, p):
    deploy = parse_text(POOL_NET.format(pool=pool, h=h, w=w, k=k, s=s, p=p), pb.NetParameter)
    weights, net = write_model(tmp_path, deploy)
    report = export_onnx(weights, tmp_path / "p.onnx", ExportOptions(check_images=2), net=net)
    assert report.max_difference <= 1e-5


def test_average_pooling_past_the_padding_and_unknown_layers_are_refused_in_one_line(tmp_path):
    deploy = parse_text(POOL_NET.format(pool="AVE", h=6, w=6, k=3, s=2, p=1), pb.NetParameter)
    weights, net = write_model(tmp_path, deploy)
    with pytest.raises(UserError, match="layer 'pool': AVE pooling with windows past the padding"):
        export_onnx(weights, tmp_path / "a.onnx", ExportOptions(), net=net)
    lrn = parse_text(POOL_NET.format(pool="MAX", h=6, w=6, k=3, s=2, p=0), pb.NetParameter)
    lrn.layer[2].type = "LRN"
    lrn.layer[2].ClearField("pooling_param")
    weights, net = write_model(tmp_path, lrn)
    with pytest.raises(UserError, match="layer 'pool' of type LRN has no ONNX export"):
        export_onnx(weights, tmp_path / "b.onnx", ExportOptions(), net=net)
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "b.onnx").exists()


def test_a_difference_over_the_tolerance_writes_nothing(tmp_path, capsys):
    from squeezecaffe.cli import main

    weights, net = write_model(tmp_path, registry_deploy("fullbypass8", narrow=True))
    code = main(["export", weights, "--net", net, "--onnx", str(tmp_path / "x.onnx"), "--tolerance", "1e-30"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "differ from our engine's by" in err and "not written" in err
    assert not (tmp_path / "x.onnx").exists()
    assert main(["export", weights, "--net", net, "--onnx", str(tmp_path / "x.onnx"), "--tolerance", "0"]) == 2
    assert "--tolerance 0: must be positive" in capsys.readouterr().err
    assert main(["export", weights, "--net", net, "--onnx", "/proc/no-such/x.onnx"]) == 2
    assert "/proc/no-such: cannot write the .onnx there" in capsys.readouterr().err


@pytest.mark.slow
def test_exported_run_scores_its_data_like_the_torch_engine_to_the_image(finished_run, tmp_path, capsys):
    from squeezecaffe.cli import main

    onnx_path = tmp_path / "run.onnx"
    assert main(["export", str(finished_run), "--onnx", str(onnx_path), "--fold-batchnorm", "--bake-transform",
                 "--dynamic-batch"]) == 0
    meta = read_onnx_metadata(str(onnx_path))
    names = [name for _, name in json.loads(meta["squeezecaffe.classes"])]
    assert names[:2] == ["red stripes", "green stripes"]
    assert json.loads(meta["squeezecaffe.baked_transform"]) is True
    assert main(["eval", str(finished_run), "--out", str(tmp_path / "torch"), "--quiet"]) == 0
    assert main(["eval", str(onnx_path), "--out", str(tmp_path / "onnx"), "--quiet", "--batch-size", "7"]) == 0
    torch_m = json.loads((tmp_path / "torch" / "metrics.json").read_text())
    onnx_m = json.loads((tmp_path / "onnx" / "metrics.json").read_text())
    assert onnx_m["engine"] == "onnxruntime" and onnx_m["count"] == torch_m["count"]
    assert onnx_m["top1"] == torch_m["top1"] and onnx_m["confusion"] == torch_m["confusion"]
    assert [e["predicted"] for e in onnx_m["errors"]] == [e["predicted"] for e in torch_m["errors"]]
    capsys.readouterr()
    assert main(["eval", str(onnx_path), "--engine", "opencv"]) == 2
    assert "an .onnx file runs in onnxruntime" in capsys.readouterr().err


def test_an_exported_file_keeps_its_class_names_and_stored_size_where_its_data_directory_is_gone(
        finished_run, data, tmp_path):
    """On another machine the data directory the file names does not exist: the names and the size files are
    brought to must come from the file itself (as a .sqz's do), not fall back to numbers and the net's input."""
    import onnx

    from squeezecaffe.cli import main
    from squeezecaffe.evaluation.preprocess import Preprocessor
    from squeezecaffe.export.onnx_export import open_onnx

    here = tmp_path / "run.onnx"
    assert main(["export", str(finished_run), "--onnx", str(here)]) == 0
    model = onnx.load(str(here))
    for prop in model.metadata_props:
        if prop.key == "squeezecaffe.data":
            prop.value = str(tmp_path / "gone")  # as on a machine without the training data
    elsewhere = tmp_path / "elsewhere.onnx"
    elsewhere.write_bytes(model.SerializeToString())

    run_art = resolve_artifacts(str(finished_run))
    art = resolve_artifacts(str(elsewhere), carried=open_onnx(str(elsewhere)))
    assert art.data_dir is None
    assert [(c.id, c.name) for c in art.labels] == [(c.id, c.name) for c in run_art.labels]
    assert art.labels[0].name == "red stripes"
    assert art.stored_size == run_art.stored_size is not None
    src = Path(json.loads((data / "manifest.json").read_text())["options"]["source"])
    image = sorted(p for p in src.rglob("*") if p.is_file())[0]
    np.testing.assert_array_equal(Preprocessor(art).display_image(image), Preprocessor(run_art).display_image(image))
