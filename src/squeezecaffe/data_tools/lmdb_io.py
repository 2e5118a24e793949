"""LMDB of Caffe Datum records: an atomic writer and a reader safe in DataLoader workers."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import cv2
import lmdb
import numpy as np

from squeezecaffe.errors import UserError
from squeezecaffe.fileio import fsync_dir
from squeezecaffe.proto import pb

INITIAL_MAP_SIZE = 1 << 26  # 64 MiB; doubled whenever full


def datum_key(index: int, rel_path: str) -> bytes:
    """convert_imageset's key: zero-padded position, underscore, the path as listed."""
    return f"{index:08d}_{rel_path}".encode()


def _open_for_writing(path: Path, map_size: int) -> lmdb.Environment:
    # No fsync per transaction: the database is invisible under its temporary name until
    # AtomicLmdbWriter.commit(), which syncs once before the rename; a crash before that leaves only
    # a temporary to discard.
    return lmdb.open(str(path), map_size=map_size, subdir=True, meminit=False, sync=False, metasync=False)


class AtomicLmdbWriter:
    """An LMDB built under a temporary name beside `final`; `commit()` renames it into place.

    Until commit the final path holds what it held before (nothing, or the previous complete
    database), whatever happens to the processes writing it. The records themselves are written by
    `LmdbAppender`s, one per writing process, on `self.tmp`.
    """

    def __init__(self, final: Path) -> None:
        self.final = Path(final)
        self.tmp = self.final.parent / f".{self.final.name}.tmp-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir(parents=True)
        # Create the files here, so that several writer processes attach to one initialised database.
        _open_for_writing(self.tmp, INITIAL_MAP_SIZE).close()

    @property
    def data_file(self) -> Path:
        return self.tmp / "data.mdb"

    def commit(self, force: bool = False) -> Path:
        """Make the finished database durable, then move it to the final path (replacing with `force`)."""
        fd = os.open(self.data_file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        lock = self.tmp / "lock.mdb"
        if lock.exists():  # readers (and Caffe) make their own
            lock.unlink()
        fsync_dir(self.tmp)
        old = None
        close_env(self.final)  # a reader of the old database in this process must not keep its files
        if self.final.exists():
            if not force:
                self.abort()
                raise UserError(f"{self.final}: a database already exists there; pass --force to replace it")
            old = self.final.parent / f".{self.final.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.final, old)
        os.replace(self.tmp, self.final)
        fsync_dir(self.final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class LmdbAppender:
    """One process's write handle on a database being built: adds batches of records, one
    transaction each, doubling the map when it is full.

    Several processes may each hold one on the same database (LMDB serialises their transactions);
    whoever grows the map passes the new size on, and the others adopt it before their next batch
    (`append`'s `map_size` argument and result), so no process ever meets a map it cannot address.
    """

    def __init__(self, path: Path, map_size: int = INITIAL_MAP_SIZE) -> None:
        self.map_size = max(map_size, INITIAL_MAP_SIZE)
        self.env = _open_for_writing(path, self.map_size)

    def append(self, pairs: list[tuple[bytes, bytes]], map_size: int = 0) -> int:
        """Write `pairs` in one transaction; returns the map size in use afterwards."""
        if map_size > self.map_size:
            self.map_size = map_size
            self.env.set_mapsize(map_size)
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    txn.cursor().putmulti(pairs)
                return self.map_size
            except lmdb.MapFullError:
                self.map_size *= 2
                self.env.set_mapsize(self.map_size)

    def close(self) -> None:
        self.env.close()


class BackgroundSync:
    """Flushes a file to disk every `interval` seconds from a thread while it is being written.

    The database is synced before it is renamed into place (that is what makes it durable);
    writing back while the converter still decodes leaves that final sync little to do, instead
    of a whole database's worth of I/O at the end.
    """

    def __init__(self, path: Path, interval: float = 0.2) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(interval,), name="lmdb-writeback", daemon=True)
        self.thread.start()

    def _run(self, interval: float) -> None:
        while not self.stop_event.wait(interval):
            os.fdatasync(self.fd)

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join()
        os.close(self.fd)


def remove_stale_temporaries(directory: Path) -> None:
    """Leftovers of a killed run (.<db>.tmp-*, .<db>.old-*) are never complete: drop them."""
    if directory.is_dir():
        for p in directory.iterdir():
            if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)


def datum_to_array(datum: pb.Datum, color: str = "native") -> np.ndarray:
    """A Datum as a uint8 CxHxW array (Caffe's layout), decoding encoded ones.

    `color` applies to encoded records, as Caffe's transform_param does: 'native' keeps the file's channels as
    DecodeDatumToCVMatNative does (imdecode with IMREAD_UNCHANGED: an RGBA PNG gives 4), 'color' forces 3
    (force_color), 'gray' forces 1 (force_gray). Raw records are returned as stored: Caffe ignores both flags for
    them, so a raw gray database under force_color stays gray (and the net's mean says so).
    """
    if datum.encoded:
        flag = {"native": cv2.IMREAD_UNCHANGED, "color": cv2.IMREAD_COLOR, "gray": cv2.IMREAD_GRAYSCALE}[color]
        img = cv2.imdecode(np.frombuffer(datum.data, np.uint8), flag)
        if img is None:
            raise UserError("encoded image cannot be decoded")
        if img.dtype != np.uint8:  # Caffe would read the 16-bit samples as pairs of bytes
            raise UserError(f"a {img.dtype.itemsize * 8}-bit encoded image, decoded with its own format (neither "
                            "force_color nor force_gray); Caffe reads 8-bit samples")
        return img[None] if img.ndim == 2 else img.transpose(2, 0, 1)
    if datum.data:
        arr = np.frombuffer(datum.data, np.uint8).reshape(datum.channels, datum.height, datum.width)
    else:  # float_data Datums (rare; HDF5-era conversions)
        arr = np.asarray(datum.float_data, np.float32).reshape(datum.channels, datum.height, datum.width)
    return arr


# One read-only environment per database and process. py-lmdb refuses to open the same files twice in a
# process, and a forked DataLoader worker inherits the parent's handles (which LMDB forbids using after a
# fork): a child closes what it inherited and opens its own.
_ENVS: dict[str, tuple[int, lmdb.Environment]] = {}


def shared_env(path: Path) -> lmdb.Environment:
    key = os.path.realpath(path)
    pid = os.getpid()
    entry = _ENVS.get(key)
    if entry is not None and entry[0] == pid:
        return entry[1]
    if entry is not None:
        for other_key, (other_pid, env) in list(_ENVS.items()):
            if other_pid != pid:
                with contextlib.suppress(lmdb.Error):
                    env.close()
                del _ENVS[other_key]
    env = lmdb.open(key, readonly=True, lock=False, readahead=False, max_readers=512)
    _ENVS[key] = (pid, env)
    return env


def close_env(path: Path) -> None:
    """Release a database's handle in this process (before a plain lmdb.open of it, or a rename)."""
    entry = _ENVS.pop(os.path.realpath(path), None)
    if entry is not None and entry[0] == os.getpid():
        entry[1].close()


class LmdbReader:
    """Random access by index to an LMDB of Datums (ours or Caffe's), raw or encoded.

    Handles live in a per-process cache (see `shared_env`), so one reader object can be handed to
    several DataLoader workers and several readers of one database can coexist.
    """

    def __init__(self, path: str | Path, color: str = "native") -> None:
        self.path = Path(path)
        if not (self.path / "data.mdb").is_file():
            raise UserError(f"{self.path}: not an LMDB database (no data.mdb)")
        self.color = color
        with self._env().begin() as txn:
            self.keys: list[bytes] = list(txn.cursor().iternext(keys=True, values=False))

    def _env(self) -> lmdb.Environment:
        return shared_env(self.path)

    def close(self) -> None:
        close_env(self.path)

    def __enter__(self) -> LmdbReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.keys)

    def datum(self, index: int) -> pb.Datum:
        with self._env().begin() as txn:
            value = txn.get(self.keys[index])
        datum = pb.Datum()
        datum.ParseFromString(value)
        return datum

    def array(self, key: bytes, datum: pb.Datum, color: str | None = None) -> np.ndarray:
        """datum_to_array (with this reader's `color` unless given), a failure naming the database and the record."""
        try:
            return datum_to_array(datum, color or self.color)
        except UserError as exc:
            raise UserError(f"{self.path} [{key.decode(errors='replace')}]: {exc}") from None

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        datum = self.datum(index)
        return self.array(self.keys[index], datum), int(datum.label)

    def __iter__(self) -> Iterator[tuple[np.ndarray, int]]:
        for key, datum in self.iter_datums():
            yield self.array(key, datum), int(datum.label)

    def iter_datums(self) -> Iterator[tuple[bytes, pb.Datum]]:
        with self._env().begin() as txn:
            for key, value in txn.cursor():
                datum = pb.Datum()
                datum.ParseFromString(value)
                yield key, datum
