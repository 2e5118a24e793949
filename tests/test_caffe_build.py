"""The Caffe build recipe and its cache, without compiling anything (the parity suite uses a real build)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from squeezecaffe.caffe_build import build, locate, recipe
from squeezecaffe.cli import main
from squeezecaffe.errors import UserError
from squeezecaffe.train.engine import pick_engine

ROOT = recipe.SDIST_FILE.removesuffix(".tar.gz")


def _fake_sdist(tmp_path: Path, net_cpp: str | None = None) -> Path:
    """A tarball with the layout of the real sdist, holding only the files the recipe touches: each fixed file is
    the fixes' old texts in order (net.cpp: `net_cpp` where given)."""
    src = tmp_path / "sdist" / ROOT
    (src / "src/caffe/proto").mkdir(parents=True)
    (src / "include/caffe/proto").mkdir(parents=True)
    (src / "python/caffe/proto").mkdir(parents=True)
    for path, text in _fixed_files("old").items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_text(text)
    if net_cpp is not None:
        (src / "src/caffe/net.cpp").write_text(net_cpp)
    for rel in recipe.REMOVED_FILES:
        (src / rel).write_text("// stale generated code\n")
    (src / "CMakeLists.txt").write_text("# the fork's own, replaced\n")
    tarball = tmp_path / recipe.SDIST_FILE
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(src, arcname=ROOT)
    return tarball


def _fixed_files(side: str) -> dict[str, str]:
    files: dict[str, str] = {}
    for fix in recipe.SOURCE_FIXES:
        files[fix.path] = files.get(fix.path, "// head\n") + getattr(fix, side) + "// between\n"
    return files


def test_sources_get_our_fixes_and_build_files(tmp_path: Path) -> None:
    src = build.prepare_sources(_fake_sdist(tmp_path), tmp_path / "work")
    for path, text in _fixed_files("new").items():
        assert (src / path).read_text() == text, path
    assert not any((src / rel).exists() for rel in recipe.REMOVED_FILES)
    for name, dest in recipe.BUILD_FILES:
        assert (src / dest).read_text() == recipe.build_file_text(name)
    assert "add_library(caffe SHARED" in (src / "CMakeLists.txt").read_text()
    assert {fix.path for fix in recipe.SOURCE_FIXES} >= {"src/caffe/internal_thread.cpp",
                                                         "src/caffe/layers/cudnn_conv_layer.cpp"}


def test_unknown_sources_stop_the_build_with_one_line(tmp_path: Path) -> None:
    tarball = _fake_sdist(tmp_path, "// a different net.cpp\n")
    with pytest.raises(UserError, match=r"net\.cpp: the text our fix replaces is not there"):
        build.prepare_sources(tarball, tmp_path / "work")


def test_recipe_hash_names_the_cache_directory(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SQUEEZECAFFE_CACHE", str(tmp_path))
    first = recipe.recipe_hash()
    assert len(first) == 12 and locate.build_dir() == tmp_path / f"caffe-{first}"
    monkeypatch.setattr(recipe, "APT_PACKAGES", (*recipe.APT_PACKAGES, "libextra-dev"))
    assert recipe.recipe_hash() != first  # a changed recipe builds into a new directory


def test_only_a_finished_build_is_found(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SQUEEZECAFFE_CACHE", str(tmp_path))
    monkeypatch.delenv("SQUEEZECAFFE_CAFFE_HOME", raising=False)
    home = locate.build_dir()
    (home / "bin").mkdir(parents=True)
    tool = home / "bin" / "convert_imageset"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert locate.find_build() is None  # no build.json: an interrupted build
    (home / locate.MARKER).write_text(json.dumps({"recipe": recipe.recipe_hash(), "cpu_only": True}))
    found = locate.find_build()
    assert found is not None and found.home == home and found.info["cpu_only"]
    assert locate.find_tool("convert_imageset") == tool


def test_a_cached_build_is_reused_not_rebuilt(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SQUEEZECAFFE_CACHE", str(tmp_path))
    monkeypatch.delenv("SQUEEZECAFFE_CAFFE_HOME", raising=False)
    home = locate.build_dir()
    (home / "python").mkdir(parents=True)
    (home / locate.MARKER).write_text("{}")
    monkeypatch.setattr(build, "link_into_venv", lambda b, echo: None)
    monkeypatch.setattr(build, "ensure_python_packages", lambda echo, log: None)
    monkeypatch.setattr(build, "check_import", lambda b: None)
    monkeypatch.setattr(build, "ensure_apt_packages", lambda *a: pytest.fail("a cached build must not reinstall"))
    lines: list[str] = []
    assert build.build_caffe(echo=lines.append).home == home
    assert lines == [f"Caffe build reused: {home}"]


def test_missing_debian_packages_without_root_print_the_apt_command(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(build, "missing_apt_packages", lambda cuda=False: ["libgoogle-glog-dev", "liblmdb-dev"])
    monkeypatch.setattr(build.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(build.shutil, "which", lambda name: None)  # no sudo
    with pytest.raises(UserError, match="sudo apt-get install libgoogle-glog-dev liblmdb-dev"):
        build.ensure_apt_packages(print, tmp_path / "log")


def test_auto_engine_is_torch_without_caffe_and_caffe_is_refused_in_one_line(no_caffe) -> None:
    assert pick_engine("auto") == "torch"
    assert pick_engine("torch") == "torch"
    with pytest.raises(UserError, match="run `make caffe`"):
        pick_engine("caffe")
    with pytest.raises(UserError, match="choose auto, torch, caffe"):
        pick_engine("tensorflow")


def test_doctor_reports_engines_and_the_build(capsys) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for key in ("engine torch", "engine caffe", "caffe build", "tool convert_imageset", "cuda devices"):
        assert key in out
    has_build = locate.find_build() is not None
    assert ("run: make caffe" in out) != has_build


def test_a_build_whose_caffe_does_not_import_is_refused(tmp_path: Path) -> None:
    (tmp_path / "python" / "caffe").mkdir(parents=True)
    (tmp_path / "python" / "caffe" / "__init__.py").write_text("import skimage_that_is_not_installed\n")
    with pytest.raises(UserError, match=r"`import caffe` fails .*No module named 'skimage_that_is_not_installed'"):
        build.check_import(locate.CaffeBuild(tmp_path, {}))


def test_a_failed_build_step_is_one_line_naming_the_log(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    log.write_text("")
    with pytest.raises(UserError) as err:
        build._run(["sh", "-c", "echo compiling; echo 'net.cpp:10: error: boom' >&2; exit 3"], log, what="cmake build")
    assert str(err.value) == f"cmake build failed (exit 3): net.cpp:10: error: boom (whole log: {log})"
