"""Every registered model: generated, checked, summarized, and held to its published figures.

The tests loop over the registry, so a new row is covered with no test edited.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from squeezecaffe.caffe_rules.state import filter_net, make_state
from squeezecaffe.netgen.builder import build_deploy, build_train_val
from squeezecaffe.netgen.registry import MODELS, SOURCES
from squeezecaffe.netgen.summary import summarize
from squeezecaffe.proto import pb
from squeezecaffe.solvers.generate import FILES, committed_model
from squeezecaffe.solvers.schedule import iterations_per_epoch
from squeezecaffe.solvers.settings import resolve
from tests.conftest import REPO, model_params, opencv_probabilities

NAMES = list(MODELS)


@pytest.fixture(scope="module")
def summaries() -> dict:
    return {name: summarize(build_deploy(spec, resolve(spec)[0])) for name, spec in MODELS.items()}


@pytest.mark.parametrize("name", NAMES)
def test_published_parameter_count(name: str, summaries: dict) -> None:
    spec = MODELS[name]
    s = summaries[name]
    pub = spec.published
    if pub is None or pub.params is None:  # a row the papers give no count for must say how it was read
        assert spec.reading, f"{name}: registry row has neither a published parameter count nor a reading"
        return
    ours = s.weights if pub.params_convention == "weights" else s.trainable
    if pub.params_exact:
        assert ours == pub.params
    else:
        assert abs(ours - pub.params) / pub.params < 0.02
    if pub.params_without_bypass is not None:
        assert s.weights_without_bypass == pub.params_without_bypass
    if pub.depth is not None:
        assert s.depth == pub.depth


@pytest.mark.parametrize("name", NAMES)
def test_published_figures_are_data_with_a_source(name: str) -> None:
    pub = MODELS[name].published
    if pub is None:
        return
    assert pub.source in SOURCES, f"{name}: unknown source {pub.source!r}"
    for what in (pub.top1, pub.top5):
        assert what is None or 0 < what < 1, f"{name}: accuracy {what} is not a fraction"
    if pub.top1 is not None and pub.top5 is not None:
        assert pub.top5 >= pub.top1
    assert pub.caffemodel_mb is None or pub.caffemodel_mb > 0


def test_list_prints_the_published_figures(capsys) -> None:
    from squeezecaffe.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "1,163,296 weights, val top-1 54%, top-5 77%, caffemodel 6.4 MB" in out  # fullbypass8, as the paper states it
    assert "4,771,146 trainable, test top-1 93.11%" in out  # cifar_resnet_543
    for name, spec in MODELS.items():
        line = next(ln for ln in out.splitlines() if ln.split()[:1] == [name])
        if spec.published is not None and spec.published.describe():
            assert spec.published.describe() in line, f"{name}: {line}"


def test_exact_figures_of_design_table(summaries: dict) -> None:
    """The numbers the papers state (docs/architecture.md, Readings), spelled out so a registry typo cannot hide them."""
    assert summaries["fullbypass8"].weights == 1_163_296
    assert summaries["fullbypass8"].weights_without_bypass == 823_328
    assert summaries["original8"].weights == summaries["partialbypass8"].weights == 823_328
    assert summaries["fullbypass12"].weights == 1_572_896
    assert summaries["squeezenet_v1_0"].trainable == 1_248_424
    assert summaries["squeezenet_v1_1"].trainable == 1_235_496
    assert summaries["simple_bypass_v1_0"].trainable == 1_248_424
    assert summaries["complex_bypass_v1_0"].trainable == 1_589_672
    resnets = {"18": 11_173_962, "2231": 7_633_994, "2221": 6_453_322, "2211": 5_272_650, "2111": 4_977_226,
               "1111": 4_903_242, "543": 4_771_146}
    for tag, count in resnets.items():
        assert summaries[f"cifar_resnet_{tag}"].trainable == count


def test_fullbypass8_rows_match_the_paper_table(summaries: dict) -> None:
    rows = {r.name: r for r in summaries["fullbypass8"].rows}
    assert rows["conv1"].weights == 2_592 and rows["conv1"].output == (1, 96, 64, 64)
    assert rows["fire2"].weights == 24_064 and rows["fire2"].weights_without_bypass == 11_776
    assert (rows["fire2"].squeeze, rows["fire2"].expand1x1, rows["fire2"].expand3x3) == (16, 64, 64)
    assert rows["conv10"].weights == 102_400
    assert rows["pool1"].output[2:] == (32, 32) and rows["pool4"].output[2:] == (16, 16)
    assert rows["pool8"].output[2:] == (8, 8)
    assert rows["fire9"].output == (1, 512, 8, 8)


@pytest.mark.parametrize("name", NAMES)
def test_emitted_files_parse_and_reserialize_identically(name: str) -> None:
    model = committed_model(MODELS[name])
    for fname, text in model.texts().items():
        msg = pb.SolverParameter() if fname == "solver.prototxt" else pb.NetParameter()
        text_format.Parse(text, msg)
        assert text_format.MessageToString(msg) == text


@pytest.mark.parametrize("name", NAMES)
def test_train_val_phases(name: str) -> None:
    spec = MODELS[name]
    cfg, _ = resolve(spec)
    net = build_train_val(spec, cfg)
    train = filter_net(net, make_state("TRAIN"))
    test = filter_net(net, make_state("TEST"))
    train_types = [la.type for la in train.layer]
    test_types = [la.type for la in test.layer]
    assert train_types.count("Data") == 1 and test_types.count("Data") == 1
    assert "Accuracy" not in train_types and "SoftmaxWithLoss" in train_types
    top5 = [la for la in test.layer if la.type == "Accuracy" and la.accuracy_param.top_k == 5]
    assert len(top5) == 1
    train_data = train.layer[0]
    assert train_data.transform_param.mirror and not test.layer[0].transform_param.mirror
    assert train_data.data_param.backend == pb.DataParameter.LMDB
    if spec.data.crop:
        assert train_data.transform_param.crop_size == cfg.input_size[0]
    deploy = build_deploy(spec, cfg)
    types = {la.type for la in deploy.layer}
    assert deploy.layer[0].type == "Input" and deploy.layer[-1].name == "prob"
    assert not types & {"Data", "SoftmaxWithLoss", "Accuracy"}


@pytest.mark.parametrize("name", NAMES)
def test_committed_prototxt_is_up_to_date(name: str) -> None:
    model = committed_model(MODELS[name])
    for fname, text in model.texts().items():
        path = REPO / "prototxt" / name / fname
        assert path.is_file(), f"{path} missing: run 'make prototxt' and commit prototxt/"
        assert path.read_text() == text, f"{path} is stale: run 'make prototxt' and commit prototxt/"
    assert set(FILES) == set(model.texts())


def test_no_stray_committed_models() -> None:
    committed = {p.name for p in (REPO / "prototxt").iterdir() if p.is_dir()}
    assert committed == set(MODELS), "prototxt/ holds a model the registry no longer has: run 'make prototxt'"


@pytest.mark.parametrize("name", model_params(NAMES))
def test_deploy_loads_in_opencv_and_gives_probabilities(name: str, tmp_path: Path) -> None:
    spec = MODELS[name]
    cfg, _ = resolve(spec)
    prob = opencv_probabilities(build_deploy(spec, cfg), tmp_path)
    assert prob.shape == (cfg.classes,)
    assert np.all(prob >= 0)
    assert prob.sum() == pytest.approx(1.0, abs=1e-4)


def test_solver_is_sized_in_epochs() -> None:
    spec = MODELS["fullbypass12"]
    cfg, sched = resolve(spec, train_size=1000, val_size=300, epochs=3, batch_size=64, test_batch_size=100)
    model = committed_model(spec)
    assert model.solver.type == "Nesterov" and model.solver.lr_policy == "poly"
    from squeezecaffe.solvers.prototxt import build_solver

    s = build_solver(cfg, sched, "net.prototxt", "snap/x", overrides={"base_lr": "0.01", "type": "Adam"})
    assert iterations_per_epoch(1000, 64) == 16  # ceil(1000/64)
    assert (s.test_interval, s.snapshot, s.max_iter, s.test_iter[0]) == (16, 16, 48, 3)
    assert s.base_lr == pytest.approx(0.01) and s.type == "Adam" and s.momentum == pytest.approx(0.9)
    assert iterations_per_epoch(1000, 64, iter_size=2) == 8


def test_input_training_net_adds_label_loss_and_frozen_statistics() -> None:
    from squeezecaffe.proto import pb, read_text
    from tests.inputnet import input_training_net
    root = Path(__file__).resolve().parent.parent
    deploy = read_text(root / "prototxt" / "fullbypass12" / "deploy.prototxt", pb.NetParameter)
    net = input_training_net(deploy, 8, dropout=False)
    assert [lp.type for lp in net.layer[-2:]] == ["Input", "SoftmaxWithLoss"]
    assert list(net.layer[-1].bottom) == [next(lp.bottom[0] for lp in net.layer if lp.type == "Softmax"), "label"]
    assert net.layer[0].input_param.shape[0].dim[0] == 8 and not any(lp.type == "Dropout" for lp in net.layer)
    assert all([p.lr_mult for p in lp.param] == [0, 0, 0] for lp in net.layer if lp.type == "BatchNorm")
    assert any(lp.type == "Dropout" for lp in input_training_net(deploy, 8).layer)
    assert deploy.layer[0].input_param.shape[0].dim[0] == 1  # the deploy net itself is untouched
