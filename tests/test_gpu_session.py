"""bench/gpu_session.sh, the script a short GPU lease runs, kept working on the CPU: its `--dry-run` runs the same
steps with the same scripts (on the CPU, at toy sizes, with fewer models and precisions) so a change that breaks a
step shows here, not on a GPU machine whose minutes are spent. Its figures are not checked: only that each step ran
and wrote its JSON."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_session.sh"


def _session(out: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """Run the script from the repository root with this interpreter first on PATH; the summary's step lines."""
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                   "WORK": str(out / "work"), **(env or {})}
    result = subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=environment, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = (out / "summary.txt").read_text().splitlines()
    return {line.split(":")[0]: line for line in lines if ": exit " in line}


def _figures(path: Path) -> dict:
    record = json.loads(path.read_text())
    assert record["script"] and record["machine"], path
    return record["figures"]


def _log(out: Path, step: str) -> str:
    return (out / f"{step}.log").read_text()[-3000:]


@pytest.mark.slow
def test_dry_run_runs_tests_speed_and_scale_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "out"
    steps = _session(out, str(out), "tests", "speed", "scale", "--dry-run")  # the flag goes anywhere
    for step in ("tests", "speed", "scale"):
        assert f"{step}: exit 0," in steps.get(step, ""), (steps, _log(out, step))
    rows = _figures(out / "speed.json")["rows"]
    assert {(r["device"], r["layout"]) for r in rows} == {("cpu", "nchw"), ("cpu", "nhwc")}
    assert all(r["engine"] > 0 and r["reference"] > 0 for r in rows)
    scale = _figures(out / "scale.json")
    assert (scale["device"], scale["model"], scale["images"]) == ("cpu", "fullbypass12", 64)
    assert scale["images_per_s"] > 0 and scale["projected_30_epochs_h"] > 0
    # the gpu lane collects (its imports resolve) and reports: skipped without CUDA, run where there is a GPU
    assert re.search(r"^\d+ (passed|skipped)", _log(out, "tests"), re.M), _log(out, "tests")


@pytest.mark.slow
@pytest.mark.caffe
def test_dry_run_caffe_step_times_real_caffe_beside_the_engine(tmp_path: Path) -> None:
    out = tmp_path / "out"
    steps = _session(out, "--dry-run", str(out), "caffe")
    assert "caffe: exit 0," in steps["caffe"], _log(out, "caffe")
    (row,) = _figures(out / "caffe.json")["rows"]
    assert row["device"] == "cpu" and row["pycaffe_images_per_s"] > 0 and row["torch_images_per_s"] > 0


def test_gpu_run_without_the_bundle_stops_the_caffe_step_and_says_how_to_make_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    steps = _session(out, str(out), "caffe", "nonsense", env={"CAFFE_BUNDLE": str(tmp_path / "none"),
                                                              "WHEELS": str(tmp_path / "no-wheels")})
    assert "caffe: exit 2," in steps["caffe"]
    assert "build-caffe --cuda --bundle" in _log(out, "caffe")
    assert "unknown step 'nonsense'" in (out / "summary.txt").read_text()
