"""No traceback from any file we read: seeded mutations of every format the CLI reads back (a run's config.json,
its snapshot markers with the plateau controller's and the guard's state, a data directory's manifest.json, a
.caffemodel, a .solverstate, a .sqz - bytes and, with valid checksums, its header - and an .onnx's metadata). Each
case must read cleanly or fail with a UserError, which the CLI prints as one line with exit code 2; any other
exception is a bug. A few cases go through the CLI itself to show the line and the exit code."""

from __future__ import annotations

import json
import random
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from squeezecaffe.caffe_rules.blobs import read_caffemodel
from squeezecaffe.cli import main
from squeezecaffe.compress.container import MAGIC
from squeezecaffe.compress.sqz import open_sqz
from squeezecaffe.data_tools.manifest import read_manifest
from squeezecaffe.errors import UserError
from squeezecaffe.proto import pb, read_binary
from squeezecaffe.train import rundir
from squeezecaffe.train.config import read_run_config
from squeezecaffe.train.guard import DivergenceGuard
from squeezecaffe.train.plateau import PlateauController

CASES = 300  # per format: 2,200 cases in all
HEADER_CASES = 100  # .sqz headers with valid checksums: most decode a whole model (0.3 s each)


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """One of: flip bytes, cut the end, insert junk (invalid UTF-8 among it), delete a span, duplicate a span."""
    data = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0:
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:
        del data[rng.randrange(len(data)):]
    elif kind == 2:
        at = rng.randrange(len(data) + 1)
        data[at:at] = bytes(rng.choice([0xFF, 0xC3, 0x00, 0x22, 0x7B, 0x5D, rng.randrange(256)])
                            for _ in range(rng.randint(1, 6)))
    elif kind == 3:
        at = rng.randrange(len(data))
        del data[at:at + rng.randint(1, 40)]
    else:
        at = rng.randrange(len(data))
        data[at:at] = data[at:at + rng.randint(1, 40)]
    return bytes(data)


def mutate_json(value: object, rng: random.Random) -> object:
    """A structural change somewhere in a JSON value: a key dropped or added, a value of another type."""
    if isinstance(value, dict) and value and rng.random() < 0.7:
        key = rng.choice(list(value))
        out = dict(value)
        choice = rng.randrange(4)
        if choice == 0:
            del out[key]
        elif choice == 1:
            out[key] = mutate_json(out[key], rng)
        elif choice == 2:
            out[f"{key}_x"] = 1
        else:
            out[key] = rng.choice([None, "text", -1, 1.5, [], {}, True, [1, "a"], {"a": None}])
        return out
    if isinstance(value, list) and value and rng.random() < 0.7:
        out = list(value)
        out[rng.randrange(len(out))] = mutate_json(out[rng.randrange(len(out))], rng)
        return out
    return rng.choice([None, "text", -7, 0, 2.5e300, [], {}, False, "\u00e9", [None]])


def _ok_or_user_error(read: Callable[[], object], what: str) -> str | None:
    """None when `read` succeeds or raises UserError; the traceback's summary otherwise."""
    try:
        read()
    except UserError as exc:
        assert str(exc) and "\n" not in str(exc).strip(), f"{what}: a UserError of more than one line: {exc!r}"
    except Exception as exc:
        return f"{what}: {type(exc).__name__}: {exc}"
    return None


def _fuzz(original: Path, read: Callable[[], object], seed: int, json_too: bool = False) -> list[str]:
    data = original.read_bytes()
    rng = random.Random(seed)
    failures = []
    try:
        for case in range(CASES):
            if json_too and case % 2:
                mutated = json.dumps(mutate_json(json.loads(data), rng)).encode()
            else:
                mutated = mutate_bytes(data, rng)
            original.write_bytes(mutated)
            failure = _ok_or_user_error(read, f"{original.name} case {case}")
            if failure:
                failures.append(failure)
    finally:
        original.write_bytes(data)
    return failures


@pytest.fixture(scope="module")
def run_copy(finished_run: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fuzz") / "run"
    shutil.copytree(finished_run, out)
    # the markers name their files by absolute path: point them at the copy
    for marker in (out / "snapshots").glob("*_iter_*.json"):
        info = json.loads(marker.read_text())
        for key in ("caffemodel", "solverstate"):
            info[key] = str(out / "snapshots" / Path(info[key]).name)
        marker.write_text(json.dumps(info))
    return out


def _resume_reads(run_dir: Path) -> None:
    """What `train --resume` reads before it trains: config.json, then the newest intact marker and its state."""
    read_run_config(run_dir)
    prefix = next((run_dir / "snapshots").glob("*_iter_*.json"))
    info = rundir.latest_complete(str(prefix.parent / rundir._MARKER.sub("", prefix.name)))
    if info is not None:
        PlateauController().load_state_dict(info["controller"], info["marker"])
        DivergenceGuard(4).load_state_dict(info.get("guard", {}), info["marker"])


def test_config_json(run_copy: Path) -> None:
    assert not _fuzz(run_copy / rundir.CONFIG, lambda: _resume_reads(run_copy), 1, json_too=True)


def test_snapshot_markers(run_copy: Path) -> None:
    newest = max((run_copy / "snapshots").glob("*_iter_*.json"), key=lambda p: int(rundir._MARKER.search(p.name)[1]))
    assert not _fuzz(newest, lambda: _resume_reads(run_copy), 2, json_too=True)


def test_manifest(data: Path, tmp_path: Path) -> None:
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    assert not _fuzz(copy / "manifest.json", lambda: read_manifest(copy), 3, json_too=True)


def test_caffemodel_and_solverstate(run_copy: Path) -> None:
    model = run_copy / "best.caffemodel"
    state = next((run_copy / "snapshots").glob("*.solverstate"))
    failures = _fuzz(model, lambda: read_caffemodel(model), 4)
    failures += _fuzz(state, lambda: read_binary(state, pb.SolverState), 5)
    assert not failures


@pytest.fixture(scope="module")
def sqz(run_copy: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sqz")
    assert main(["compress", str(run_copy), "--out", str(out / "c"), "--retrain-epochs", "0", "--quiet"]) == 0
    return next((out / "c").rglob("*.sqz"))


def _reheader(data: bytes, header: object) -> bytes:
    """The .sqz with another header whose length and CRC are right (so only its content can be wrong)."""
    (length,) = struct.unpack("<I", data[4:8])
    raw = zlib.compress(json.dumps(header).encode())
    return MAGIC + struct.pack("<I", len(raw)) + raw + struct.pack("<I", zlib.crc32(raw)) + data[12 + length:]


def test_sqz_bytes_and_headers(sqz: Path) -> None:
    failures = _fuzz(sqz, lambda: open_sqz(str(sqz)), 6)
    data = sqz.read_bytes()
    (length,) = struct.unpack("<I", data[4:8])
    header = json.loads(zlib.decompress(data[8:8 + length]))
    rng = random.Random(7)
    try:
        for case in range(HEADER_CASES):
            sqz.write_bytes(_reheader(data, mutate_json(header, rng)))
            failure = _ok_or_user_error(lambda: open_sqz(str(sqz)), f"sqz header case {case}")
            if failure:
                failures.append(failure)
    finally:
        sqz.write_bytes(data)
    assert not failures, "\n".join(failures[:20])


def test_onnx_metadata(run_copy: Path, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from squeezecaffe.export.onnx_export import open_onnx

    path = tmp_path / "m.onnx"
    assert main(["export", str(run_copy), "--onnx", str(path)]) == 0
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    rng = random.Random(8)
    failures = []
    for case in range(CASES):
        mutated = dict(props)
        key = rng.choice(list(mutated))
        mutated[key] = rng.choice(["", "null", "[1,", "{}", "[]", "\u00ff\u00fe", '{"a": 1}', "3", '"x"',
                                   json.dumps(mutate_json(json.loads(props[key]) if props[key][:1] in "[{" else
                                                          props[key], rng))])
        del model.metadata_props[:]
        for k, v in mutated.items():
            model.metadata_props.add(key=k, value=v)
        onnx.save(model, str(path))
        failure = _ok_or_user_error(lambda: open_onnx(str(path)), f"onnx metadata case {case}")
        if failure:
            failures.append(failure)
    assert not failures, "\n".join(failures[:20])


def test_the_cli_says_one_line_and_exits_2(run_copy: Path, sqz: Path, capsys) -> None:
    config = run_copy / rundir.CONFIG
    saved = config.read_bytes()
    try:
        config.write_bytes(saved[:40] + b"\xff\xfe" + saved[40:])  # not UTF-8: a UnicodeDecodeError before
        assert main(["train", "--resume", str(run_copy)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "config.json: not a run's JSON file (not UTF-8 text)" in err[0]
    finally:
        config.write_bytes(saved)
    data = sqz.read_bytes()
    try:
        sqz.write_bytes(_reheader(data, ["a list, not an object"]))
        assert main(["eval", str(sqz), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("squeezecaffe: error: ") and sqz.name in err[0]
    finally:
        sqz.write_bytes(data)
