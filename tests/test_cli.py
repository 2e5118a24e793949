"""The command line: real verbs in-process, and one-line errors with exit code 2."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from squeezecaffe.cli import main
from squeezecaffe.proto import pb, read_text
from tests.datasets import write_class_folders


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_every_model(capsys) -> None:
    code, out, _ = run(capsys, "list")
    assert code == 0
    assert "fullbypass12" in out and "1,572,896" in out and "cifar_resnet_543" in out


def test_summary_prints_table_and_totals(capsys) -> None:
    code, out, _ = run(capsys, "summary", "fullbypass8")
    assert code == 0
    assert "1,163,296" in out and "823,328 without bypass" in out and "fire2" in out


def test_gen_with_overrides(capsys, tmp_path: Path) -> None:
    code, _, _ = run(capsys, "gen", "fullbypass8", "--out", str(tmp_path), "--classes", "10", "--input", "32x32",
                       "--batch-size", "16", "--train-size", "160", "--val-size", "40", "--epochs", "2",
                       "--solver-set", "base_lr=0.02")
    assert code == 0
    deploy = read_text(tmp_path / "deploy.prototxt", pb.NetParameter)
    assert list(deploy.layer[0].input_param.shape[0].dim) == [1, 3, 32, 32]
    conv10 = next(la for la in deploy.layer if la.name == "conv10")
    assert conv10.convolution_param.num_output == 10
    solver = read_text(tmp_path / "solver.prototxt", pb.SolverParameter)
    assert (solver.max_iter, solver.test_interval) == (20, 10)
    assert solver.base_lr == pytest.approx(0.02)
    assert solver.net == str(tmp_path / "train_val.prototxt")


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("settings, expected", [
    (["DATA=/x/tiny-imagenet-200/"], "/from/the/environment/data/tiny-imagenet-200"),  # OUT from the environment: root
    (["DATA=/x/photos", "OUT=/y/data"], "/y/data")])
def test_make_build_lmdb_writes_where_out_says_or_beside_the_other_data(settings: list[str], expected: str) -> None:
    """Without OUT on the command line, `make build-lmdb DATA=...` writes OUT/data/<name of DATA> (OUT is then the
    output root, out/ by default, as for the default dataset), not into the root itself."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    shown = subprocess.run(["make", "-s", "-C", str(root), "print-LMDB_OUT", *settings], capture_output=True,
                           text=True, check=True, env={**env, "OUT": "/from/the/environment"}).stdout.strip()
    assert shown == expected


def test_data_that_is_not_a_data_directory_says_what_it_is_and_what_to_give(capsys, tmp_path: Path) -> None:
    """An image folder, one LMDB of a data directory and a bare LMDB each get the way to what `--data` takes."""
    images = write_class_folders(tmp_path / "images", classes=2, per_class=2)
    assert main(["build-lmdb", str(images), str(tmp_path / "data"), "--quiet", "--val-fraction", "0"]) == 0
    shutil.copytree(tmp_path / "data" / "train_lmdb", tmp_path / "bare_lmdb")
    assert main(["build-lmdb", str(images / "class_0"), str(tmp_path / "one_class"), "--quiet", "--val-fraction", "0"]) \
        == 2
    assert "images but no class folders: give the folder that holds the class folders" in capsys.readouterr().err
    single = write_class_folders(tmp_path / "single", classes=1, per_class=2)
    assert main(["build-lmdb", str(single), str(tmp_path / "one_class"), "--quiet"]) == 0
    assert "holds one class (is it one class's folder?" in capsys.readouterr().out
    capsys.readouterr()
    for data, message in ((images, "it holds images: to train on them, build a data directory first "
                                   f"('squeezecaffe build-lmdb {images} DATA')"),
                          (tmp_path / "data" / "train_lmdb", f"one database of the data directory {tmp_path / 'data'}"),
                          (tmp_path / "bare_lmdb", "a bare LMDB (no manifest says its classes"),
                          (tmp_path / "data" / "labels.txt", "a file, not a data directory"),
                          (tmp_path / "one_class", "has one class: a classifier needs two or more")):
        code, _, err = run(capsys, "gen", "fullbypass8", "--out", str(tmp_path / "net"), "--data", str(data))
        assert code == 2 and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("argv, message", [
    (["summary", "nosuchmodel"], "unknown model 'nosuchmodel'"),
    (["gen", "fullbypass8", "--out", "x", "--input", "0x64"], "--input '0x64': height and width must be positive"),
    (["gen", "fullbypass8", "--out", "x", "--input", "big"], "expected HxW"),
    (["gen", "fullbypass8", "--out", "x", "--classes", "-3"], "--classes must be positive"),
    (["gen", "fullbypass8", "--out", "x", "--classes", "1"], "--classes 1: a classifier needs two or more classes"),
    (["gen", "fullbypass8", "--out", "x", "--solver-set", "bogus=1"], "SolverParameter has no field 'bogus'"),
    (["gen", "squeezenet_v1_0", "--out", "x", "--input", "227x200"], "crop_size is square"),
    (["gen", "fullbypass8", "--out", "x", "--data", "/nonexistent"], "/nonexistent: no such data directory"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, message, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_broken_prototxt_is_one_line(capsys, tmp_path: Path) -> None:
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layer { name: "x" type: "Convolution" bottom: "nothing" top: "x" ')
    code, _, err = run(capsys, "summary", str(bad))
    assert code == 2 and str(bad) in err and len(err.strip().splitlines()) == 1
    bad.write_text('layer { name: "x" type: "ReLU" bottom: "nothing" top: "x" }')
    code, _, err = run(capsys, "summary", str(bad))
    assert code == 2 and "bottom blob 'nothing'" in err


def test_draw_writes_png(capsys, tmp_path: Path) -> None:
    code, _, _ = run(capsys, "draw", "partialbypass8", "-o", str(tmp_path / "net.png"))
    assert code == 0
    data = (tmp_path / "net.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_controller_and_guard_options_come_from_their_dataclasses() -> None:
    """Every CLI-facing field of PlateauOptions/GuardOptions is a `train` option with the field's default."""
    from dataclasses import fields

    from squeezecaffe.cli import build_parser
    from squeezecaffe.cli.common import dataclass_values
    from squeezecaffe.train.guard import GuardOptions
    from squeezecaffe.train.plateau import PlateauOptions

    args = build_parser().parse_args(["train", "fullbypass8"])
    assert dataclass_values(args, PlateauOptions) == {f.name: f.default for f in fields(PlateauOptions)
                                                      if f.metadata.get("cli", True)}
    assert {"stop_below", "patience_iterations"} <= set(dataclass_values(args, PlateauOptions))
    assert dataclass_values(args, GuardOptions, prefix="guard-") == {"retries": GuardOptions.retries}
    args = build_parser().parse_args(["train", "fullbypass8", "--factors", "10,3", "--stop-after", "2",
                                      "--guard-retries", "0"])
    assert args.factors == (10.0, 3.0) and args.stop_after == 2 and args.guard_retries == 0


def test_train_options_come_from_the_run_config() -> None:
    """The `train` verb's options are TrainConfig's fields: same defaults, flags for bools, choices kept; a run's
    config.json built from the parsed options holds every field."""
    from dataclasses import asdict, fields

    from squeezecaffe.cli import build_parser
    from squeezecaffe.cli.common import dataclass_values
    from squeezecaffe.errors import UserError
    from squeezecaffe.train.config import TrainConfig

    parser = build_parser()
    options = [f for f in fields(TrainConfig) if f.metadata.get("cli", True)]
    assert {"data", "epochs", "bn_images", "allow_sorted", "normalize"} <= {f.name for f in options}
    assert dataclass_values(parser.parse_args(["train", "fullbypass8"]), TrainConfig) == {
        f.name: f.default for f in options}
    args = parser.parse_args(["train", "fullbypass8", "--bn-images", "0", "--allow-sorted", "--normalize", "std",
                              "--epochs", "3", "--engine", "torch"])
    values = dataclass_values(args, TrainConfig)
    assert values["bn_images"] == 0 and values["allow_sorted"] is True and values["epochs"] == 3
    assert asdict(TrainConfig(**values))["normalize"] == "std"
    with pytest.raises(UserError, match="invalid choice: 'median'"):
        parser.parse_args(["train", "fullbypass8", "--normalize", "median"])


def test_device_options_come_from_one_dataclass_for_every_engine_verb() -> None:
    """train, solve, forward and time take the device options of engines/device.py: same defaults, flags, choices;
    lr-find, eval and classify take its --device, the demo all but --channels-last; `flags` gives them back."""
    from dataclasses import asdict, fields

    from squeezecaffe.cli import build_parser
    from squeezecaffe.cli.common import dataclass_values
    from squeezecaffe.engines.device import DeviceOptions
    from squeezecaffe.errors import UserError

    parser = build_parser()
    defaults = {f.name: f.default for f in fields(DeviceOptions)}
    for argv in (["train", "fullbypass8"], ["solve", "s.prototxt"], ["forward", "n.prototxt", "--output", "o.npz"],
                 ["time", "fullbypass8"]):
        assert dataclass_values(parser.parse_args(argv), DeviceOptions) == defaults, argv[0]
    args = parser.parse_args(["train", "fullbypass8", "--device", "cuda:1", "--amp", "bf16", "--channels-last",
                              "--data-in-memory"])
    chosen = DeviceOptions(**dataclass_values(args, DeviceOptions))
    assert asdict(chosen) == {**defaults, "device": "cuda:1", "amp": "bf16", "channels_last": True,
                              "data_in_memory": True}
    assert chosen.torch_only == ["--channels-last", "--amp", "--data-in-memory"]  # all but --device
    again = parser.parse_args(["train", "fullbypass8", *chosen.flags])  # what a printed command carries
    assert DeviceOptions(**dataclass_values(again, DeviceOptions)) == chosen and DeviceOptions().flags == []
    demo = parser.parse_args(["demo", "--device", "cuda", "--amp", "bf16"])  # the demo: channels-last always on
    assert (demo.device, demo.amp) == ("cuda", "bf16") and not hasattr(demo, "channels_last")
    for argv in (["lr-find", "fullbypass8", "--data", "d"], ["eval", "run"], ["classify", "run", "x.png"]):
        picked = parser.parse_args([*argv, "--device", "cuda"])  # these take the device, no more
        assert picked.device == "cuda" and not hasattr(picked, "amp"), argv[0]
    with pytest.raises(UserError, match="invalid choice: 'fp8'"):
        parser.parse_args(["train", "fullbypass8", "--amp", "fp8"])


def test_an_engines_own_settings_are_not_device_flags() -> None:
    """EngineOptions adds workers/prefetch/dtype to the device options: `flags` and `torch_only` name only the
    latter (the Caffe engine refuses what torch_only lists)."""
    from squeezecaffe.engines.torchcaffe.options import EngineOptions

    options = EngineOptions(workers=2, prefetch=8, dtype="float64")
    assert options.flags == [] and options.torch_only == []
    assert EngineOptions(amp="bf16", workers=2).torch_only == ["--amp"]
