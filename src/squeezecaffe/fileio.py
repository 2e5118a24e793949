"""Atomic file writes: a reader never sees a half-written artifact at its final path.

The one home of writing a final artifact: every file squeezecaffe itself leaves for a user (models, snapshots,
tables, JSON, pictures; real Caffe's own snapshots are Caffe's) goes through `atomic_write_bytes`/`_text`,
`atomic_copy` or `atomic_savefig`; tests/test_atomic_writes.py scans the package for any other write. Logs that
grow line by line (log.csv, train.log) and work files inside a staging folder that is renamed into place as a
whole are the exceptions that test lists."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to a temp file beside `path`, fsync it, then rename it into place.

    rename() within one directory is atomic on POSIX, so a crash (even SIGKILL) leaves
    either the old complete file or the new complete one, never a truncated mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; give it the mode a plain open() would (0666 minus the umask).
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def resolve_beside(path: str | os.PathLike, base_dir: Path | None) -> Path:
    """A path from a prototxt: Caffe reads it relative to the working directory; when nothing is
    there, try it relative to the prototxt's folder (`base_dir`), so a run directory can move."""
    p = Path(path)
    if p.exists() or p.is_absolute() or base_dir is None:
        return p
    beside = Path(base_dir) / p
    return beside if beside.exists() else p


def ensure_writable_dir(path: str | os.PathLike, what: str = "cannot write there") -> Path:
    """Create `path` if needed and prove it takes files, before any long work starts (one-line error)."""
    from squeezecaffe.errors import UserError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise UserError(f"{path}: {what} ({exc.strerror})") from None
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_json_object(path: str | os.PathLike, what: str = "a JSON file") -> dict:
    """A JSON object from `path`, or one UserError line naming the file and what is wrong with it (missing,
    unreadable, not UTF-8, not JSON, not an object): the one way our own JSON files are read back."""
    import json

    from squeezecaffe.errors import UserError

    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not {what} (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not {what} (not valid JSON: {exc})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: not {what} (a JSON {type(raw).__name__}, expected an object)")
    return raw


def first_line(exc: BaseException) -> str:
    """An exception's message as one line (its first non-empty one; the type's name where it has none)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def atomic_copy(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """A copy of `source` at `path`, complete or absent (read whole: our artifacts are at most a few hundred MB)."""
    return atomic_write_bytes(path, Path(source).read_bytes())


def atomic_savefig(fig, path: str | os.PathLike, **kwargs) -> Path:
    """A matplotlib figure saved to `path` atomically (rendered into memory first, in the format of the suffix)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format=kwargs.pop("format", Path(path).suffix.lstrip(".") or "png"), **kwargs)
    return atomic_write_bytes(path, buf.getvalue())


def fsync_dir(directory: str | os.PathLike) -> None:
    """Persist a rename: the directory entry itself must reach the disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
