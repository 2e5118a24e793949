"""`make docker-test` as a test: the image built FROM a local Debian base, the CLI run inside it end to end
(docker/test.sh says every step). Marked `docker`: not in `make test`; skipped where no Docker engine answers
and none can be started (not root, or no dockerd)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def engine_available() -> bool:
    if shutil.which("docker") is None:
        return False
    if subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return True
    return os.geteuid() == 0 and shutil.which("dockerd") is not None


@pytest.mark.docker
def test_the_image_builds_and_runs_the_cli_end_to_end():
    if not engine_available():
        pytest.skip("no Docker engine answers here and none can be started (needs root and Debian's docker.io)")
    result = subprocess.run(["bash", str(ROOT / "docker" / "test.sh"), sys.executable], capture_output=True,
                            text=True, timeout=1800)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "[docker-test] passed" in result.stdout
    assert "top-1" in result.stdout  # eval ran inside the image
