"""`make caffe` / `squeezecaffe build-caffe`: build the recipe into the cache, reuse it when present.

Steps: Debian build dependencies (installed when root or password-less sudo, else the one apt command is
printed); the pinned sdist via pip (sha256 checked, kept in the cache); extract; apply our source fixes and
build files; CMake configure, build with all cores, install into a staging directory; write build.json last and
rename the staging directory into place, so an interrupted build never looks finished. Finally a .pth file
makes `import caffe` work in the current virtual environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from squeezecaffe.caffe_build import recipe
from squeezecaffe.caffe_build.locate import MARKER, CaffeBuild, build_dir, cache_root, finished_build
from squeezecaffe.errors import UserError

Echo = Callable[[str], None]
PTH_NAME = "squeezecaffe-caffe.pth"


def _run(cmd: list[str], log: Path, cwd: Path | None = None, what: str = "", env: dict | None = None) -> None:
    with log.open("a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        result = subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        last = lines[-1].strip() if lines else "no output"
        raise UserError(f"{what or cmd[0]} failed (exit {result.returncode}): {last[:300]} (whole log: {log})")


def missing_apt_packages(cuda: bool = False) -> list[str]:
    if shutil.which("dpkg-query") is None:
        raise UserError("building Caffe needs a Debian/Ubuntu system (dpkg-query not found); install its "
                        "dependencies by hand and point SQUEEZECAFFE_CAFFE_HOME at a Caffe build")
    missing = []
    for name in recipe.apt_packages(cuda):
        out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True)
        if "install ok installed" not in out.stdout:
            missing.append(name)
    return missing


def ensure_apt_packages(echo: Echo, log: Path, cuda: bool = False) -> None:
    missing = missing_apt_packages(cuda)
    if not missing:
        return
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    if os.geteuid() == 0:
        prefix: list[str] = []
    elif shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        prefix = ["sudo", "-n"]
    else:
        raise UserError("Caffe's build dependencies are missing; run: sudo apt-get update && sudo apt-get install "
                        + " ".join(missing))
    echo(f"installing {len(missing)} Debian packages: {' '.join(missing)}")
    env_cmd = [*prefix, "env", "DEBIAN_FRONTEND=noninteractive"]
    _run([*env_cmd, "apt-get", "update", "-q"], log, what="apt-get update")
    _run([*env_cmd, *command], log, what="apt-get install")


def ensure_python_packages(echo: Echo, log: Path) -> None:
    import importlib.util

    missing = [req for req, module in recipe.PYTHON_PACKAGES if importlib.util.find_spec(module) is None]
    if missing:
        echo(f"installing pycaffe's Python dependencies: {' '.join(missing)}")
        _run([sys.executable, "-m", "pip", "install", "-q", *missing], log, what="pip install")


def fetch_sdist(log: Path) -> Path:
    """The pinned sdist, from the cache or downloaded by pip; its sha256 must match the recipe."""
    cached = cache_root() / "sdist" / recipe.SDIST_FILE
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cached.parent) as tmp:
            _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                  "-d", tmp, recipe.SDIST_REQUIREMENT], log, what="pip download")
            os.replace(Path(tmp) / recipe.SDIST_FILE, cached)
    digest = hashlib.sha256(cached.read_bytes()).hexdigest()
    if digest != recipe.SDIST_SHA256:
        cached.unlink()
        raise UserError(f"{recipe.SDIST_FILE}: sha256 {digest} is not the recipe's {recipe.SDIST_SHA256} (removed; "
                        "run again to download it anew)")
    return cached


def prepare_sources(sdist: Path, work: Path) -> Path:
    with tarfile.open(sdist) as tar:
        tar.extractall(work, filter="data")
    src = work / recipe.SDIST_FILE.removesuffix(".tar.gz")
    for fix in recipe.SOURCE_FIXES:
        path = src / fix.path
        text = path.read_text()
        if fix.old not in text:
            raise UserError(f"{path}: the text our fix replaces is not there ({fix.why}); the sdist is not the one "
                            "the recipe knows")
        path.write_text(text.replace(fix.old, fix.new))
    for rel in recipe.REMOVED_FILES:
        (src / rel).unlink(missing_ok=True)
    for name, dest in recipe.BUILD_FILES:
        (src / dest).parent.mkdir(parents=True, exist_ok=True)
        (src / dest).write_text(recipe.build_file_text(name))
    return src


def link_into_venv(build: CaffeBuild, echo: Echo) -> None:
    """A .pth file in the venv's site-packages puts the build's python/ on sys.path (`import caffe`)."""
    if sys.prefix == sys.base_prefix:
        echo(f"not in a virtual environment: add {build.python_dir} to PYTHONPATH to `import caffe`")
        return
    pth = Path(sysconfig.get_paths()["purelib"]) / PTH_NAME
    pth.write_text(f"{build.python_dir}\n")


def check_import(build: CaffeBuild) -> None:
    """`import caffe` from the build in a fresh interpreter: a build that does not load is not a build."""
    code = f"import sys; sys.path.insert(0, {str(build.python_dir)!r}); import caffe"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"{build.python_dir}: `import caffe` fails ({last}); rebuild with: squeezecaffe build-caffe "
                        "--force")


def compiler_cache(work: Path) -> tuple[list[str], dict | None]:
    """CMake options and environment that put ccache in front of the compilers where it is installed: a rebuild
    (--force, a new venv, the CUDA build after a failed try) then compiles only what changed. Paths are hashed
    relative to the work folder, so a build in another temporary folder hits the same entries. Outputs are the
    compilers' own; the recipe hash does not depend on it."""
    if shutil.which("ccache") is None:
        return [], None
    options = [f"-DCMAKE_{lang}_COMPILER_LAUNCHER=ccache" for lang in ("C", "CXX", "CUDA")]
    return options, dict(os.environ, CCACHE_BASEDIR=str(work), CCACHE_NOHASHDIR="true")


def cmake_options(cuda: bool, echo: Echo, log: Path) -> list[str]:
    """The recipe's CMake options: none for the CPU build; the toolkit, cuDNN, architectures and RPATH for CUDA."""
    if not cuda:
        return []
    from squeezecaffe.caffe_build.toolkit import ensure_toolkit

    kit = ensure_toolkit(echo, log)
    rpath = ";".join(str(d) for d in kit.library_dirs)
    return [*recipe.CUDA_CMAKE_OPTIONS, f"-DCMAKE_CUDA_COMPILER={kit.nvcc}", f"-DCUDAToolkit_ROOT={kit.cuda_home}",
            f"-DSQUEEZECAFFE_CUDNN_ROOT={kit.cudnn_home}", f"-DCMAKE_CUDA_ARCHITECTURES={recipe.CUDA_ARCHITECTURES}",
            f"-DSQUEEZECAFFE_EXTRA_RPATH={rpath}"]


def build_caffe(jobs: int | None = None, force: bool = False, echo: Echo = print, cuda: bool = False) -> CaffeBuild:
    """Build the CPU (default) or CUDA recipe into the cache, or reuse the finished build there."""
    target = build_dir(cuda)
    existing = finished_build(target)
    log = cache_root() / f"caffe-{'cuda-' if cuda else ''}{recipe.recipe_hash(cuda)}.log"
    if existing is not None and not force:
        echo(f"Caffe build reused: {target}")
        ensure_python_packages(echo, log)  # a new venv needs pycaffe's Python imports too
        if not cuda:
            link_into_venv(existing, echo)
        check_import(existing)
        return existing
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    log.write_text(f"squeezecaffe Caffe build {recipe.recipe_hash(cuda)} started {time.ctime()}\n")
    kind = "CUDA" if cuda else "CPU"
    echo(f"building Caffe ({recipe.SDIST_REQUIREMENT}, {kind}, recipe {recipe.recipe_hash(cuda)}) into {target}; "
         f"log: {log}")
    started = time.time()
    ensure_apt_packages(echo, log, cuda)
    ensure_python_packages(echo, log)
    sdist = fetch_sdist(log)
    options = cmake_options(cuda, echo, log)
    jobs = jobs or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as tmp:
        work = Path(tmp)
        src = prepare_sources(sdist, work)
        staging = work / "install"
        build = work / "build"
        launcher, env = compiler_cache(work)
        _run(["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
              f"-DPython3_EXECUTABLE={sys.executable}", f"-DCMAKE_INSTALL_PREFIX={staging}", *options, *launcher],
             log, what="cmake configure", env=env)
        echo(f"compiling with {jobs} jobs ({'about 20' if cuda else 'about 4'} minutes on 2 cores"
             f"{', less with a warm ccache' if launcher else ''})")
        _run(["cmake", "--build", str(build), "-j", str(jobs)], log, what="cmake build", env=env)
        _run(["cmake", "--install", str(build)], log, what="cmake install")
        info = {"recipe": recipe.recipe_hash(cuda), "sdist": recipe.SDIST_REQUIREMENT, "sha256": recipe.SDIST_SHA256,
                "python": platform.python_version(), "machine": platform.machine(), "cpu_only": not cuda,
                "built": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.time() - started)}
        if cuda:
            info.update({"cuda_architectures": recipe.CUDA_ARCHITECTURES, "cuda_wheels": list(recipe.CUDA_WHEELS),
                         "opencv": False})
        (staging / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    result = CaffeBuild(target, info)
    if not cuda:  # the venv's `import caffe` stays the CPU build, which the parity suite is pinned to
        link_into_venv(result, echo)
    check_import(result)
    echo(f"Caffe ({kind}) built in {info['seconds']} s: {target}")
    return result
