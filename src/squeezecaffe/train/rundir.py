"""A training run's directory: config, provenance, snapshots with their markers, logs.

A snapshot is complete when its marker `<prefix>_iter_N.json` exists: the marker is written last,
atomically, after the .caffemodel and .solverstate (each atomic too) and holds the controller state.
`--resume` only ever considers snapshots with a marker, so a SIGKILL at any moment leaves at worst
an unreferenced temporary file, never a truncated snapshot that would be picked up.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

from squeezecaffe import __version__
from squeezecaffe.errors import UserError
from squeezecaffe.fileio import atomic_write_bytes, atomic_write_text, ensure_writable_dir, read_json_object
from squeezecaffe.train.logs import LOG_CSV, RAW_LOG  # noqa: F401  (the run directory's log names live in logs.py)

CONFIG = "config.json"
PROVENANCE = "run.json"


def write_json(path: Path, data: dict) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> dict:
    if not Path(path).exists():
        raise UserError(f"{path}: not found (is this a run directory?)")
    return read_json_object(path, "a run's JSON file")


def make_run_dir(path: Path) -> Path:
    return ensure_writable_dir(path, "cannot write the run directory").resolve()


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def cpu_name() -> str:
    """The processor's marketing name (Linux), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(engine: str, device: str) -> dict:
    """What produced a run: code version, engine, device, libraries, host, command line."""
    import cv2
    import google.protobuf
    import numpy
    import torch

    info = {
        "squeezecaffe": __version__, "git_commit": _git_commit(), "engine": engine, "device": device,
        "python": sys.version.split()[0], "torch": torch.__version__, "numpy": numpy.__version__,
        "protobuf": google.protobuf.__version__, "opencv": cv2.__version__, "host": platform.node(),
        "platform": platform.platform(), "cpus": os.cpu_count(), "cpu": cpu_name(), "argv": sys.argv,
        "processes": int(os.environ.get("WORLD_SIZE", "1")),  # data-parallel ranks (torchrun)
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    if engine == "caffe":
        from squeezecaffe.caffe_build.locate import find_build

        build = find_build()
        info["caffe"] = {"home": str(build.home), **build.info} if build else {"home": "importable caffe module"}
    return info


_MARKER = re.compile(r"_iter_(\d+)\.json$")


def snapshot_markers(prefix: str) -> list[tuple[int, Path]]:
    """(iteration, marker) of every snapshot with a marker, oldest first."""
    folder, stem = Path(prefix).parent, Path(prefix).name
    if not folder.is_dir():
        return []
    found = []
    for p in folder.glob(f"{stem}_iter_*.json"):
        m = _MARKER.search(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


# what a snapshot marker must hold, and of which type, to be used (snapshot() writes it)
_MARKER_FIELDS = {"caffemodel": str, "solverstate": str, "iter": int, "controller": dict, "best_top1": (int, float)}


def read_marker(marker: Path) -> dict | None:
    """A snapshot marker's content with its own path under "marker", or None where it is damaged (unreadable, not
    a JSON object, a field missing or of the wrong type): a damaged marker marks no complete snapshot."""
    try:
        info = read_json_object(marker, "a snapshot marker")
    except UserError:
        return None
    for key, kind in _MARKER_FIELDS.items():
        if not isinstance(info.get(key), kind) or isinstance(info.get(key), bool):
            return None
    if not isinstance(info.get("guard", {}), dict) or not isinstance(info.get("best_iter"), int | None):
        return None
    return {**info, "marker": str(marker)}


def latest_complete(prefix: str) -> dict | None:
    """The newest snapshot whose marker is intact and whose two files exist (the marker is read back to be sure)."""
    for _, marker in reversed(snapshot_markers(prefix)):
        info = read_marker(marker)
        if info is not None and Path(info["caffemodel"]).is_file() and Path(info["solverstate"]).is_file():
            return info
    return None


def is_run_dir(path: Path) -> bool:
    """A training run's directory: it holds config.json and log.csv (eval, classify and report accept one)."""
    return (Path(path) / CONFIG).is_file() and (Path(path) / LOG_CSV).is_file()


def newest_snapshot(run_dir: Path) -> dict | None:
    """The newest complete snapshot under RUN_DIR/snapshots, whatever its prefix (latest_complete's rule)."""
    prefixes = {str(m.parent / _MARKER.sub("", m.name)) for m in (Path(run_dir) / "snapshots").glob("*_iter_*.json")}
    found = [info for info in (latest_complete(p) for p in prefixes) if info is not None]
    return max(found, key=lambda info: info["iter"]) if found else None


def prune_snapshots(prefix: str, keep: int, protect: int | None = None) -> None:
    """Keep the newest `keep` complete snapshots, and the one at iteration `protect` (the best epoch's, which the
    divergence guard restores); the marker goes first so a half-pruned one is ignored."""
    markers = snapshot_markers(prefix)
    for it, marker in markers[: max(0, len(markers) - keep)]:
        if it == protect:
            continue
        marker.unlink(missing_ok=True)
        for suffix in (".caffemodel", ".solverstate"):
            Path(f"{prefix}_iter_{it}{suffix}").unlink(missing_ok=True)


def copy_atomic(src: Path, dst: Path) -> Path:
    return atomic_write_bytes(dst, Path(src).read_bytes())


def remove_stale(folder: Path) -> None:
    """Temporaries of a killed atomic write (.name.XXXX.tmp) are never complete files."""
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            p.unlink(missing_ok=True)


LOCK = ".lock"


class RunLock:
    """One training process per run directory: an exclusive flock on RUN_DIR/.lock that holds the owner's pid.

    The kernel drops a flock when its process dies however it dies, so a lock left by a killed run never
    blocks `--resume`; a second live `train` on the same directory is refused with one line naming the pid.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        make_run_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"{self.path.parent}: another training process (pid {holder}) is using this run "
                            "directory; wait for it to finish or choose another --run-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock; the file stays (its pid is stale, and harmless)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
