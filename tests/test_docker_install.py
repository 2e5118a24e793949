"""The GPU image's install steps (docker/install.sh) run here, on the plain machine, into a fresh environment.

The environment is a new venv that sees this venv's packages (torch among them, as the image's base provides
torch) through a .pth file, so the script installs our package and nothing heavy. Needs PyPI for the build
backend, as `make setup` does.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_docker_install_script_installs_a_working_cli(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "out", "runs", "__pycache__",
                                                             "*.egg-info", ".pytest_cache", ".ruff_cache"))
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "base-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    result = subprocess.run(["bash", str(ROOT / "docker" / "install.sh"), str(src), str(python)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "engine torch" in result.stdout and "cuda devices" in result.stdout  # doctor ran
    installed = subprocess.run([str(python), "-c", "import squeezecaffe; print(squeezecaffe.__file__)"],
                               capture_output=True, text=True, check=True).stdout
    assert installed.startswith(site)  # our package itself went into the new environment
    assert (env_dir / "bin" / "squeezecaffe").is_file()


def test_docker_install_script_refuses_a_python_without_torch(tmp_path: Path) -> None:
    env_dir = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    result = subprocess.run(["bash", str(ROOT / "docker" / "install.sh"), str(ROOT), str(env_dir / "bin" / "python")],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "has no torch" in result.stderr
