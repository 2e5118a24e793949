"""Writing one split's LMDB with several processes in list order.

The list is cut into chunks. Worker processes (`--jobs`) each take every jobs-th chunk, decode it,
then write it when its turn comes: chunk k is written right after chunk k-1, so keys follow the
list and are numbered over the records actually written, as convert_imageset numbers them. Nothing
but keys and counts goes back to the parent, so on two cores the workers are all the work there is
(sending the pixels through a pipe to one writing parent measured slower than one process).
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing as mp
import os
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

import lmdb
import numpy as np
from tqdm import tqdm

from squeezecaffe.data_tools.decode import Decoded, DecodeOptions, make_datum
from squeezecaffe.data_tools.lmdb_io import (
    INITIAL_MAP_SIZE,
    LmdbAppender,
    datum_key,
)
from squeezecaffe.errors import UserError

CHUNK = 256  # images a worker decodes before its turn to write them (one LMDB transaction)
assert CHUNK * 255 < 1 << 16, "a chunk's pixel sums are kept in uint16"


@dataclass(frozen=True)
class SplitJob:
    """What every worker of one split needs (inherited through fork, pickled under spawn)."""

    root: Path
    items: list[tuple[str, int]]  # (relative path, label) in key order
    decode: DecodeOptions
    db: Path  # the temporary database
    same_size: bool  # raw images without --resize: every record must have the first one's size
    bounds: tuple[int, ...]  # chunk k is items[bounds[k]:bounds[k + 1]]

    @property
    def chunks(self) -> int:
        return len(self.bounds) - 1


def worker_count(count: int, requested: int) -> int:
    """Processes for `count` images: as requested (0: all cores), never more than there are chunks."""
    return max(1, min(requested or os.cpu_count() or 1, -(-count // CHUNK)))


def chunk_bounds(count: int, jobs: int) -> tuple[int, ...]:
    """Chunks of CHUNK images, the last jobs x CHUNK images in quarter chunks so that the workers
    finish together (each takes every jobs-th chunk)."""
    head = max(0, count - jobs * CHUNK)
    return (*range(0, head, CHUNK), *range(head, count, CHUNK // 4), count)


# Slots of the state the writers share: whose turn, records written so far, the database's image
# shape (C, H, W; 0 until the first record), the LMDB map size, and a stop flag.
_NEXT, _WRITTEN, _C, _H, _W, _MAP, _STOP = range(7)


class _Stopped(Exception):
    """Another worker failed or the parent is gone: stop without writing more."""


class Turns:
    """Chunk k is written only after chunk k-1: the shared state and whose turn it is to write."""

    def __init__(self, ctx: mp.context.BaseContext | None = None) -> None:
        self.state = ctx.RawArray("q", 7) if ctx else [0] * 7
        self.cond = ctx.Condition() if ctx else None
        self.state[_MAP] = INITIAL_MAP_SIZE

    @contextlib.contextmanager
    def turn(self, chunk: int, parent_pid: int | None) -> Iterator:
        if self.cond is None:  # one process writes its chunks in order
            yield self.state
            self.state[_NEXT] = chunk + 1
            return
        with self.cond:
            while True:
                if self.state[_STOP] or (parent_pid is not None and os.getppid() != parent_pid):
                    raise _Stopped  # checked at every turn, so orphans of a killed parent stop within a chunk
                if self.state[_NEXT] == chunk:
                    break
                self.cond.wait(0.5)
            yield self.state
            self.state[_NEXT] = chunk + 1
            self.cond.notify_all()

    def is_turn(self, chunk: int) -> bool:
        """A lock-free peek (an aligned 8-byte read); `turn` still takes the lock."""
        return self.state[_NEXT] == chunk

    def stop(self) -> None:
        if self.cond is not None:
            with self.cond:
                self.state[_STOP] = 1
                self.cond.notify_all()


def _place(job: SplitJob, chunk: int, decoded: list[Decoded], state) -> tuple[list, list, list, list]:
    """Keys for the records of one chunk, in its turn; images of another size are skipped here."""
    pairs, keys, skipped, written = [], [], [], []
    first = job.bounds[chunk]
    for offset, d in enumerate(decoded):
        rel = job.items[first + offset][0]
        if d.value is None:
            skipped.append((rel, d.reason))
            continue
        if job.same_size:
            if not state[_C]:
                state[_C], state[_H], state[_W] = d.shape
            elif d.shape != (state[_C], state[_H], state[_W]):
                skipped.append((rel, f"size {d.shape[1]}x{d.shape[2]} differs from the database's "
                                     f"{state[_H]}x{state[_W]}; use --resize HxW"))
                continue
        key = datum_key(state[_WRITTEN] + len(pairs), rel)
        pairs.append((key, d.value))
        keys.append(key)
        written.append(d)
    return pairs, keys, skipped, written


def write_chunks(job: SplitJob, chunks: Iterable[int], turns: Turns, report: Callable[[tuple], None],
                  parent_pid: int | None = None) -> None:
    """A worker's life: decode its chunks, write each in its turn, tell the parent; sum raw pixels for the mean.

    A decoded chunk whose turn has not come waits while the next one is decoded, and is written
    between two images as soon as its turn comes: a worker blocks only when a second chunk is ready.
    """
    appender = LmdbAppender(job.db, turns.state[_MAP])
    sums = None
    ready: deque[tuple[int, list[Decoded], dict]] = deque()

    def write(chunk: int, decoded: list[Decoded], partial_sums: dict) -> None:
        nonlocal sums
        with turns.turn(chunk, parent_pid) as state:
            pairs, keys, skipped, written = _place(job, chunk, decoded, state)
            if pairs:
                state[_MAP] = appender.append(pairs, state[_MAP])
            state[_WRITTEN] += len(pairs)
        # Every record written has the database's size, and every decoded record of that size was written.
        partial = partial_sums.get(written[0].shape) if written else None
        if partial is not None:
            sums = partial.astype(np.uint64) if sums is None else sums + partial
        report(("chunk", chunk, len(decoded), keys, skipped, sum(len(v) for _, v in pairs),
                list(dict.fromkeys(d.shape for d in written))))  # the chunk's sizes, first record's first

    try:
        for chunk in chunks:
            decoded = []
            partial_sums: dict[tuple, np.ndarray] = {}  # raw images summed per size, then let go
            for rel, label in job.items[job.bounds[chunk]:job.bounds[chunk + 1]]:
                d = make_datum(job.root / rel, label, job.decode)
                if d.image is not None:
                    # A chunk's sum fits uint16 (CHUNK * 255 < 2^16), the cheapest add; totals are uint64.
                    partial = partial_sums.get(d.shape)
                    if partial is None:
                        partial = partial_sums[d.shape] = np.zeros(d.image.shape, np.uint16)
                    np.add(partial, d.image, out=partial)
                    d.image = None
                decoded.append(d)
                if ready and turns.is_turn(ready[0][0]):
                    write(*ready.popleft())
            ready.append((chunk, decoded, partial_sums))
            if len(ready) > 1:
                write(*ready.popleft())
        while ready:
            write(*ready.popleft())
        report(("done", sums))
    except lmdb.Error as exc:
        raise UserError(f"{job.db}: writing the database failed: {exc}") from None
    finally:
        appender.close()


def _worker_main(job: SplitJob, chunks: range, turns: Turns, conn, parent_pid: int, inherited: list) -> None:
    """Entry point of a worker process: every failure is told to the parent, which reports it."""
    for other in inherited:  # receiving ends copied by fork: held here, a dead parent's pipes would never break
        other.close()
    try:
        write_chunks(job, chunks, turns, conn.send, parent_pid)
    except _Stopped:
        pass
    except BaseException as exc:
        turns.stop()
        detail = "" if isinstance(exc, UserError) else traceback.format_exc()
        with contextlib.suppress(OSError):
            conn.send(("error", str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}", detail))
    finally:
        conn.close()


class Collector:
    """The parent's side: keys hashed in chunk order, skipped images, bytes, pixel sums, progress."""

    def __init__(self, bar: tqdm) -> None:
        self.bar = bar
        self.keys = hashlib.sha256()
        self.next = 0
        self.waiting: dict[int, tuple[list, list, tuple | None]] = {}
        self.skipped: list[tuple[str, str]] = []
        self.count = 0
        self.bytes = 0
        self.shape: tuple[int, int, int] | None = None
        self.shapes: set[tuple[int, int, int]] = set()  # every size written (more than one: encoded, no --resize)
        self.sums: np.ndarray | None = None

    def __call__(self, message: tuple) -> None:
        if message[0] == "done":
            sums = message[1]
            if sums is not None:
                self.sums = sums if self.sums is None else self.sums + sums
            return
        _, chunk, size, keys, skipped, nbytes, shapes = message
        self.waiting[chunk] = (keys, skipped, shapes)
        self.shapes.update(map(tuple, shapes))
        while self.next in self.waiting:  # messages may cross; what depends on order is taken in chunk order
            in_order, skipped_in_order, shapes_in_order = self.waiting.pop(self.next)
            for key in in_order:
                self.keys.update(key + b"\n")
            self.skipped += skipped_in_order
            self.shape = self.shape or (tuple(shapes_in_order[0]) if shapes_in_order else None)  # the manifest's size
            self.next += 1
        self.count += len(keys)
        self.bytes += nbytes
        self.bar.update(size)


class Workers:
    """`jobs` forked writer processes; `relay` passes their reports on and fails if one fails."""

    def __init__(self, job: SplitJob, jobs: int) -> None:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        self.job = job
        self.turns = Turns(ctx)
        self.procs: list = []
        self.conns: dict = {}
        try:
            for w in range(jobs):
                receive, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_worker_main, name=f"build-lmdb-{w}", daemon=True,
                                   args=(job, range(w, job.chunks, jobs), self.turns, send, os.getpid(),
                                         [*self.conns, receive]))
                proc.start()
                send.close()  # the worker holds the only sending end: end of file means it is gone
                self.procs.append(proc)
                self.conns[receive] = proc
        except BaseException:
            self.close()
            raise

    def relay(self, collect: Collector) -> None:
        """Pass reports on until every worker is gone; then raise the first failure, if any.

        A failure stops the others (they see the stop flag at their next turn) and the loop drains
        them, so a worker that merely stopped is never taken for the one that failed.
        """
        done, failures = set(), []
        while self.conns:
            for conn in wait(list(self.conns)):
                try:
                    message = conn.recv()
                except EOFError:
                    proc = self.conns.pop(conn)
                    proc.join()
                    if proc not in done and proc.exitcode != 0:  # killed (out of memory, say): not a bug
                        how = f"killed by signal {-proc.exitcode}" if proc.exitcode < 0 else f"exit code {proc.exitcode}"
                        failures.append((f"converter worker {proc.name} died ({how}) while writing {self.job.db}; "
                                         "nothing was kept", ""))
                        self.turns.stop()
                    continue
                if message[0] == "error":
                    _, text, detail = message
                    failures.append((f"converter worker {self.conns[conn].name} failed: {text}\n{detail}"
                                     if detail else text, detail))
                    self.turns.stop()
                    continue
                if message[0] == "done":
                    done.add(self.conns[conn])
                collect(message)
        if failures:  # a traceback means a bug (RuntimeError, shown whole); anything else is one line
            text, detail = failures[0]
            raise RuntimeError(text) if detail else UserError(text)
        if len(done) < len(self.procs):
            raise RuntimeError(f"converter workers stopped before writing all of {self.job.db}")

    def close(self) -> None:
        self.turns.stop()
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()
        for conn in self.conns:
            conn.close()
