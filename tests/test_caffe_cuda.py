"""The CUDA recipe, the bundle and the device checks, without a GPU and without compiling Caffe: the recipe's
parts, the cache layout, which build a run takes, the bundle's library closure, and the one-line refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from squeezecaffe.caffe_build import bundle, locate, recipe, toolkit
from squeezecaffe.cli import main
from squeezecaffe.engines.pycaffe import runtime
from squeezecaffe.errors import UserError


def _finished(home: Path, **info) -> Path:
    (home / "lib").mkdir(parents=True, exist_ok=True)
    (home / locate.MARKER).write_text(json.dumps(info))
    return home


@pytest.fixture
def cache(monkeypatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("SQUEEZECAFFE_CACHE", str(tmp_path))
    for name in ("SQUEEZECAFFE_CAFFE_HOME", locate.BUILD_CHOICE, runtime.BINDING):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_the_cuda_recipe_is_its_own_cache_entry() -> None:
    assert recipe.recipe_hash(cuda=True) != recipe.recipe_hash()
    assert locate.build_dir(cuda=True).name == f"caffe-cuda-{recipe.recipe_hash(cuda=True)}"
    assert "patchelf" in recipe.apt_packages(cuda=True) and "patchelf" not in recipe.apt_packages()
    # every architecture from Turing to Hopper as machine code, PTX for the newest
    assert recipe.CUDA_ARCHITECTURES.split(";") == ["75-real", "80-real", "86-real", "89-real", "90"]
    assert all(req.count("==") == 1 for req in recipe.CUDA_WHEELS)  # pinned: the toolkit is part of the recipe


def test_a_changed_cuda_part_changes_only_the_cuda_hash(monkeypatch) -> None:
    cpu, cuda = recipe.recipe_hash(), recipe.recipe_hash(cuda=True)
    monkeypatch.setattr(recipe, "CUDA_ARCHITECTURES", "90")
    assert recipe.recipe_hash() == cpu and recipe.recipe_hash(cuda=True) != cuda


def test_which_build_a_run_takes(cache: Path, monkeypatch) -> None:
    assert locate.find_build() is None and locate.find_build(cuda=True) is None
    cuda_home = _finished(locate.build_dir(cuda=True), cpu_only=False)
    assert locate.find_build().home == cuda_home  # the only one there
    cpu_home = _finished(locate.build_dir(), cpu_only=True)
    assert locate.find_build().home == cpu_home  # the CPU build by default: the parity suite is pinned to it
    assert locate.find_build(cuda=True).home == cuda_home
    monkeypatch.setenv(locate.BUILD_CHOICE, "cuda")
    assert locate.find_build().home == cuda_home and locate.find_build().cuda
    monkeypatch.setenv(locate.BUILD_CHOICE, "rocm")
    with pytest.raises(UserError, match="SQUEEZECAFFE_CAFFE_BUILD='rocm': expected cpu or cuda"):
        locate.find_build()


def test_a_damaged_marker_is_an_unfinished_build(cache: Path) -> None:
    home = locate.build_dir()
    (home / "lib").mkdir(parents=True)
    (home / locate.MARKER).write_bytes(b"\xff\xfe{not json")
    assert locate.find_build() is None
    (home / locate.MARKER).write_text("[1, 2]")
    assert locate.find_build() is None


def test_a_bundle_home_is_read_as_a_bundle(cache: Path, monkeypatch, tmp_path: Path) -> None:
    home = _finished(tmp_path / "bundle", bundle=True, cpu_only=False)
    monkeypatch.setenv("SQUEEZECAFFE_CAFFE_HOME", str(home))
    found = locate.find_build()
    assert found.is_bundle and found.cuda and found.capi_library == home / "lib" / "libsqueezecaffe_capi.so"
    (home / "lib" / "libsqueezecaffe_capi_cuda.so").write_bytes(b"\x7fELF")
    assert found.capi_library == home / "lib" / "libsqueezecaffe_capi_cuda.so"  # a CUDA build's own name


@pytest.mark.parametrize(("device", "index"), [("cuda", 0), ("cuda:0", 0), ("cuda:3", 3)])
def test_cuda_device_names(device: str, index: int) -> None:
    assert runtime.cuda_device_index(device) == index


@pytest.mark.parametrize("device", ["cuda:", "cuda:x", "cuda:-1", "gpu", "cuda:1:2"])
def test_a_bad_cuda_device_name_is_one_line(device: str) -> None:
    with pytest.raises(UserError, match=f"--device {device}: expected cpu, cuda or cuda:N"):
        runtime.cuda_device_index(device)


class _FakeCaffe:
    """The calls select_device makes, recorded; `count` devices (or the runtime's refusal)."""

    def __init__(self, count: int | None) -> None:
        self.count, self.calls = count, []

    def cuda_device_count(self) -> int:
        if self.count is None:
            raise RuntimeError("cudaGetDeviceCount: CUDA driver version is insufficient for CUDA runtime version")
        return self.count

    def set_mode_cpu(self) -> None:
        self.calls.append("cpu")

    def set_mode_gpu(self) -> None:
        self.calls.append("gpu")

    def set_device(self, index: int) -> None:
        self.calls.append(f"device {index}")


def test_select_device_checks_before_caffe_does(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(runtime, "_caffe_build", locate.CaffeBuild(tmp_path, {"cpu_only": False}))
    fake = _FakeCaffe(count=None)
    with pytest.raises(UserError, match=r"--device cuda: no CUDA device can be used here .*driver version"):
        runtime.select_device(fake, "cuda")
    fake = _FakeCaffe(count=2)
    with pytest.raises(UserError, match=r"--device cuda:2: this machine has 2 CUDA device\(s\) \(cuda:0..cuda:1\)"):
        runtime.select_device(fake, "cuda:2")
    assert fake.calls == []  # nothing reached Caffe
    runtime.select_device(fake, "cuda:1")
    assert fake.calls == ["device 1", "gpu"]
    runtime.select_device(fake, "cpu")
    assert fake.calls[-1] == "cpu"


class _PlainPycaffe:
    """A pycaffe that cannot count devices (a user's own install: no C interface beside it)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def set_mode_gpu(self) -> None:
        self.calls.append("gpu")

    def set_device(self, index: int) -> None:
        self.calls.append(f"device {index}")


def test_a_caffe_of_unknown_make_is_left_to_decide(monkeypatch, tmp_path: Path) -> None:
    """A user's own install (no build.json, or just importable): not refused, not counted; Caffe takes the device."""
    for build in (None, locate.CaffeBuild(tmp_path, {"source": "SQUEEZECAFFE_CAFFE_HOME"})):
        monkeypatch.setattr(runtime, "_caffe_build", build)
        fake = _PlainPycaffe()
        runtime.select_device(fake, "cuda:1")
        assert fake.calls == ["device 1", "gpu"]


def test_pycaffe_of_our_cuda_build_counts_devices_through_the_c_interface(monkeypatch, tmp_path: Path) -> None:
    """pycaffe cannot count devices; our CUDA build has the C interface beside it, which does (before set_device)."""
    home = _finished(tmp_path / "cuda", cpu_only=False)
    (home / "lib" / "libsqueezecaffe_capi_cuda.so").write_bytes(b"\x7fELF")
    monkeypatch.setattr(runtime, "_caffe_build", locate.finished_build(home))
    loaded: list[Path] = []

    def fake_load(build):
        loaded.append(build.capi_library)
        return _FakeCaffe(count=1)

    monkeypatch.setattr(runtime, "_load_capi", fake_load)
    fake = _PlainPycaffe()
    with pytest.raises(UserError, match=r"--device cuda:1: this machine has 1 CUDA device\(s\) \(cuda:0..cuda:0\)"):
        runtime.select_device(fake, "cuda:1")
    assert loaded == [home / "lib" / "libsqueezecaffe_capi_cuda.so"] and fake.calls == []
    runtime.select_device(fake, "cuda:0")
    assert fake.calls == ["device 0", "gpu"]


def test_select_device_refuses_cuda_on_a_cpu_only_caffe(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(runtime, "_caffe_build", locate.CaffeBuild(tmp_path, {"cpu_only": True}))
    with pytest.raises(UserError, match="--device cuda: the Caffe in use is CPU-only"):
        runtime.select_device(_FakeCaffe(count=1), "cuda")


def test_caffe_on_cuda_without_a_cuda_build_is_one_line(cache: Path, monkeypatch) -> None:
    monkeypatch.setattr(runtime, "_caffe", None)
    _finished(locate.build_dir(), cpu_only=True)
    with pytest.raises(UserError, match="no Caffe build with CUDA here; build one with: squeezecaffe build-caffe --cuda"):
        runtime.import_caffe(cuda=True)


def test_a_cpu_caffe_already_loaded_refuses_cuda(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(runtime, "_caffe", object())
    monkeypatch.setattr(runtime, "_caffe_build", locate.CaffeBuild(tmp_path, {"cpu_only": True}))
    with pytest.raises(UserError, match="already loaded a CPU-only Caffe"):
        runtime.import_caffe(cuda=True)


def test_bundle_needs_cuda_in_one_line(capsys) -> None:
    assert main(["build-caffe", "--bundle", "somewhere"]) == 2
    assert "--bundle DIR carries the CUDA build: add --cuda" in capsys.readouterr().err


def test_the_toolkit_gets_the_names_a_linker_looks_for(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "libcudart.so.13").write_bytes(b"\x7fELF")
    (lib / "libcublas.so.13").write_bytes(b"\x7fELF")
    (lib / "libcudadevrt.a").write_bytes(b"!<arch>")
    toolkit._link_unversioned(lib)
    assert (lib / "libcudart.so").resolve() == (lib / "libcudart.so.13").resolve()
    assert (lib / "libcublas.so").is_symlink() and not (lib / "libcudadevrt.so").exists()
    toolkit._link_unversioned(lib)  # again: nothing breaks


def _system_library(name: str) -> Path:
    found = sorted(Path("/usr/lib").rglob(name)) + sorted(Path("/lib").rglob(name))
    if not found:
        pytest.skip(f"{name} is not on this machine")
    return found[0]


def test_the_bundle_closure_leaves_out_the_system_and_cuda(tmp_path: Path) -> None:
    """On a real shared library of this machine (libcurl, with a deep closure): its dependencies, transitively,
    without glibc and the C++ runtime; a library under a CUDA folder counts as provided by the target."""
    curl = _system_library("libcurl.so.4")
    deps = bundle.shared_dependencies(curl, ())
    assert "libssl.so.3" in deps and "libcrypto.so.3" in deps  # libcrypto only through libssl/ssh: transitive
    assert not set(deps) & bundle.SYSTEM_SONAMES
    assert all(path.is_file() for path in deps.values())
    ssl_dir = deps["libssl.so.3"].parent
    without = bundle.shared_dependencies(curl, (ssl_dir,))
    assert "libssl.so.3" not in without  # everything found in that folder is the target's


def test_a_library_that_cannot_load_stops_the_bundle(tmp_path: Path) -> None:
    if shutil.which("patchelf") is None:
        pytest.skip("patchelf is not installed (the CUDA recipe installs it)")
    fake = tmp_path / "libneedy.so"
    shutil.copyfile(_system_library("libz.so.1"), fake)
    import subprocess

    subprocess.run(["patchelf", "--add-needed", "libsqueezecaffe_nowhere.so.7", str(fake)], check=True)
    with pytest.raises(UserError, match=r"needs libsqueezecaffe_nowhere\.so\.7, which is not found on this machine"):
        bundle.shared_dependencies(fake, ())


def test_a_bundle_without_patchelf_is_one_line_with_the_command(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(bundle.shutil, "which", lambda name: None)
    cuda = locate.CaffeBuild(tmp_path / "cuda", {"cpu_only": False})
    with pytest.raises(UserError, match=r"needs patchelf .*run: sudo apt-get install patchelf"):
        bundle.write_bundle(cuda, tmp_path / "out", (), print)
    assert not (tmp_path / "out").exists()


def test_a_bundle_is_made_of_the_cuda_build_into_a_folder_of_its_own(tmp_path: Path) -> None:
    cpu = locate.CaffeBuild(tmp_path / "cpu", {"cpu_only": True})
    with pytest.raises(UserError, match="a bundle is made of the CUDA build"):
        bundle.write_bundle(cpu, tmp_path / "out", (), print)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    cuda = locate.CaffeBuild(tmp_path / "cuda", {"cpu_only": False})
    with pytest.raises(UserError, match="exists and is not a Caffe bundle"):
        bundle.write_bundle(cuda, other, (), print)
    assert (other / "notes.txt").read_text() == "keep me"
    with pytest.raises(UserError, match="exists and is not a folder"):
        bundle.write_bundle(cuda, other / "notes.txt", (), print)
    with pytest.raises(UserError, match=r"libsqueezecaffe_capi_cuda\.so: missing from the build"):
        bundle.write_bundle(cuda, tmp_path / "new", (), print)
    assert not (tmp_path / "new").exists()  # nothing half-written
