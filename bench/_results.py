"""One home for a benchmark's results file and for the description of the machine it ran on.

Every figure that README or docs/ quote comes from a JSON file under bench/results/, written here by the script
that measured it: the command as typed, the commit, the machine (read from the machine itself, never typed), the
date, how many runs stand behind each figure and their spread, and the figures. tests/test_figures.py holds the
documents to these files, so a figure that is re-measured, edited or left stale fails a test.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
# The instruction-set extensions that decide which CPU kernels run (bf16 and the wide vector units).
_ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def _cpu() -> tuple[str, list[str]]:
    name, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name in ("", platform.machine(), platform.processor()):
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = [f for f in _ISA_FLAGS if f in value.split()]
    except OSError:
        pass
    return name, flags


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine(device: str = "cpu") -> dict:
    """The machine as it describes itself: CPU model, usable cores, ISA extensions, memory, and with a CUDA
    device among `device` (comma-separated) its name, driver and CUDA version; the library versions."""
    name, flags = _cpu()
    info: dict = {"cpu": name, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                  else os.cpu_count(), "isa": flags, "memory_gib": _memory_gib(),
                  "python": platform.python_version(), "platform": platform.platform()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        cuda = next((d for d in device.split(",") if d.startswith("cuda")), None)
        if cuda and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(torch.device(cuda))
            info["cuda"] = torch.version.cuda
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, check=False)
            info["driver"] = driver.stdout.strip().splitlines()[0] if driver.returncode == 0 else None
    except ImportError:
        pass
    return info


def describe(info: dict) -> str:
    """One line for a table's caption: `AMD EPYC, 2 cores, avx2 avx512f avx512_bf16, 23.4 GiB, torch 2.x`."""
    parts = [info["cpu"], f"{info['cores']} cores", " ".join(info["isa"]) or "no AVX2", f"{info['memory_gib']} GiB"]
    if "torch" in info:
        parts.append(f"torch {info['torch']}")
    if info.get("gpu"):
        parts.append(f"{info['gpu']} (driver {info.get('driver')}, CUDA {info.get('cuda')})")
    return ", ".join(parts)


def commit() -> str | None:
    """HEAD, with `-dirty` when src/ or bench/ (results aside) differ from it: the figures then belong to
    uncommitted code, and tests/test_figures.py refuses them."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=False)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src", "bench",
                                ":!bench/results"], capture_output=True, text=True, check=False)
    except OSError:
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def spread(values: list[float]) -> dict:
    """min / median / max of repeated measurements of one figure (one value: all three equal)."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "runs": len(values)}


def write_results(path: str | Path | None, figures: dict, *, runs: int, device: str = "cpu",
                  spreads: dict | None = None, notes: str = "") -> Path | None:
    """Write `figures` with their provenance to `path` (atomically: a reader never sees half a file).
    `runs` is how many independent runs stand behind each figure; `spreads` maps a figure's name to its
    `spread(...)` where runs > 1."""
    if not path:
        return None
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    script = Path(sys.argv[0]).resolve()
    try:
        script_name = str(script.relative_to(REPO))
    except ValueError:
        script_name = script.name
    record = {"script": script_name, "command": shlex.join(["python", script_name, *sys.argv[1:]]),
              "commit": commit(), "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "machine": machine(device), "runs": runs, "spread": spreads or {}, "notes": notes,
              "figures": figures}
    temporary = target.with_name(f".{target.name}.partial")
    temporary.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, target)
    print(f"wrote {target}")
    return target
