"""`build-lmdb`: a dataset folder or list -> one LMDB per split + mean + labels + manifest.

The list is cut into chunks. Worker processes (`--jobs`) each take every jobs-th chunk, decode it,
then write it when its turn comes: chunk k is written right after chunk k-1, so keys follow the
list and are numbered over the records actually written, as convert_imageset numbers them. Nothing
but keys and counts goes back to the parent, so on two cores the workers are all the work there is
(sending the pixels through a pipe to one writing parent measured slower than one process).
Each database is written under a temporary name and renamed into place when complete; the manifest
is written last, so a data directory with a manifest is always complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing as mp
import os
import random
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

import lmdb
import numpy as np
from tqdm import tqdm

from squeezecaffe.data_tools.decode import PAD_MODES, Decoded, DecodeOptions, make_datum
from squeezecaffe.data_tools.layouts import Dataset, discover
from squeezecaffe.data_tools.lmdb_io import (
    INITIAL_MAP_SIZE,
    AtomicLmdbWriter,
    BackgroundSync,
    LmdbAppender,
    datum_key,
    remove_stale_temporaries,
)
from squeezecaffe.data_tools.manifest import DataManifest, write_manifest
from squeezecaffe.data_tools.mean import (
    MixedSizesError,
    channel_means,
    channel_stats,
    mean_from_pixel_sums,
    save_mean,
    write_mean,
)
from squeezecaffe.errors import UserError
from squeezecaffe.fileio import atomic_write_text, ensure_writable_dir
from squeezecaffe.options import NOT_AN_OPTION, option

CHUNK = 256  # images a worker decodes before its turn to write them (one LMDB transaction)
assert CHUNK * 255 < 1 << 16, "a chunk's pixel sums are kept in uint16"


@dataclass
class ConvertOptions:
    """build-lmdb's settings; the fields that are options carry their default and help here (cli/data.py builds
    `build-lmdb`'s and `import`'s options from them)."""

    resize: tuple[int, int] | None = field(default=None, metadata=NOT_AN_OPTION)  # --resize HxW
    gray: bool = option(False, "store 1-channel images")
    encoded: bool = option(False, "store the JPEG/PNG bytes instead of raw pixels")
    # Record order: "train" (the default) shuffles the training split, seeded, so batches mix the classes; "all"
    # shuffles every split; "none" keeps the listing order (convert_imageset's default: class by class).
    shuffle: str = field(default="train", metadata=NOT_AN_OPTION)  # --keep-order / --shuffle
    seed: int = option(0, "seed of the shuffle and of the --val-fraction/--limit draws")
    jobs: int = field(default=0, metadata=NOT_AN_OPTION)  # 0 = all cores (--jobs)
    max_skip: float = option(0.01, "fail when more than this fraction of a split is broken")
    force: bool = option(False, "replace existing databases in OUT")
    splits: tuple[str, ...] = field(default=("train", "val", "test"), metadata=NOT_AN_OPTION)  # --splits a,b
    progress: bool = field(default=True, metadata=NOT_AN_OPTION)  # --quiet
    pad: int = option(0, "store every image with this border (e.g. 4 for CIFAR's pad-and-crop augmentation): nets "
                         "then train on random crops of the stored size minus the border and test on the centre")
    pad_mode: str = option("reflect", "how the border is filled", choices=["reflect", "zero"])


@dataclass
class SplitResult:
    name: str
    count: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    shape: tuple[int, int, int] | None = None
    keys_sha256: str = ""
    pixel_sums: np.ndarray | None = None  # exact sums of the raw images written (HxWxC), for the mean


@dataclass(frozen=True)
class _SplitJob:
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


def _chunk_bounds(count: int, jobs: int) -> tuple[int, ...]:
    """Chunks of CHUNK images, the last jobs x CHUNK images in quarter chunks so that the workers
    finish together (each takes every jobs-th chunk)."""
    head = max(0, count - jobs * CHUNK)
    return (*range(0, head, CHUNK), *range(head, count, CHUNK // 4), count)


# Slots of the state the writers share: whose turn, records written so far, the database's image
# shape (C, H, W; 0 until the first record), the LMDB map size, and a stop flag.
_NEXT, _WRITTEN, _C, _H, _W, _MAP, _STOP = range(7)


class _Stopped(Exception):
    """Another worker failed or the parent is gone: stop without writing more."""


class _Turns:
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


def _place(job: _SplitJob, chunk: int, decoded: list[Decoded], state) -> tuple[list, list, list, list]:
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


def _write_chunks(job: _SplitJob, chunks: Iterable[int], turns: _Turns, report: Callable[[tuple], None],
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
                written[0].shape if written else None))

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


def _worker_main(job: _SplitJob, chunks: range, turns: _Turns, conn, parent_pid: int, inherited: list) -> None:
    """Entry point of a worker process: every failure is told to the parent, which reports it."""
    for other in inherited:  # receiving ends copied by fork: held here, a dead parent's pipes would never break
        other.close()
    try:
        _write_chunks(job, chunks, turns, conn.send, parent_pid)
    except _Stopped:
        pass
    except BaseException as exc:
        turns.stop()
        detail = "" if isinstance(exc, UserError) else traceback.format_exc()
        with contextlib.suppress(OSError):
            conn.send(("error", str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}", detail))
    finally:
        conn.close()


class _Collector:
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
        self.sums: np.ndarray | None = None

    def __call__(self, message: tuple) -> None:
        if message[0] == "done":
            sums = message[1]
            if sums is not None:
                self.sums = sums if self.sums is None else self.sums + sums
            return
        _, chunk, size, keys, skipped, nbytes, shape = message
        self.waiting[chunk] = (keys, skipped, shape)
        while self.next in self.waiting:  # messages may cross; what depends on order is taken in chunk order
            in_order, skipped_in_order, shape_in_order = self.waiting.pop(self.next)
            for key in in_order:
                self.keys.update(key + b"\n")
            self.skipped += skipped_in_order
            self.shape = self.shape or shape_in_order  # the first record's (the manifest's size)
            self.next += 1
        self.count += len(keys)
        self.bytes += nbytes
        self.bar.update(size)


class _Workers:
    """`jobs` forked writer processes; `relay` passes their reports on and fails if one fails."""

    def __init__(self, job: _SplitJob, jobs: int) -> None:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        self.job = job
        self.turns = _Turns(ctx)
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

    def relay(self, collect: _Collector) -> None:
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


def convert_split(dataset: Dataset, split: str, out_db: Path, options: ConvertOptions) -> SplitResult:
    items = list(dataset.splits[split])
    if options.shuffle == "all" or (options.shuffle == "train" and split == "train"):
        random.Random(options.seed).shuffle(items)
    jobs = max(1, min(options.jobs or os.cpu_count() or 1, -(-len(items) // CHUNK)))
    writer = AtomicLmdbWriter(out_db)
    job = _SplitJob(dataset.root, items, DecodeOptions(gray=options.gray, resize=options.resize,
                                                       encoded=options.encoded, pad=options.pad,
                                                       pad_mode=options.pad_mode),
                    writer.tmp, same_size=not options.resize and not options.encoded,
                    bounds=_chunk_bounds(len(items), jobs))
    result = SplitResult(split)
    start = time.perf_counter()
    workers = bar = flusher = None
    try:
        # Workers first: forking once the progress bar's or the flusher's thread runs is unsafe.
        workers = _Workers(job, jobs) if jobs > 1 else None
        bar = tqdm(total=len(items), desc=f"{split:5s}", unit="img", disable=not options.progress, leave=False)
        collect = _Collector(bar)
        flusher = BackgroundSync(writer.data_file)
        if workers is None:
            _write_chunks(job, range(job.chunks), _Turns(), collect)
        else:
            workers.relay(collect)
        flusher.stop()
        flusher = None
        result.count, result.bytes, result.shape = collect.count, collect.bytes, collect.shape
        result.skipped, result.keys_sha256, result.pixel_sums = collect.skipped, collect.keys.hexdigest(), collect.sums
        limit = options.max_skip * len(items)
        if len(result.skipped) > limit:
            first = result.skipped[0]
            hint = f" (paths are read relative to {dataset.root}; see --root)" if first[1] == "file not found" else ""
            raise UserError(f"{split}: {len(result.skipped)} of {len(items)} images failed (more than --max-skip "
                            f"{options.max_skip:.0%}); first: {first[0]}: {first[1]}{hint}")
        if result.count == 0:
            raise UserError(f"{split}: no image could be converted")
        writer.commit(force=options.force)
    except BaseException:
        writer.abort()
        raise
    finally:
        if workers is not None:
            workers.close()
        if flusher is not None:
            flusher.stop()
        if bar is not None:
            bar.close()
    result.seconds = time.perf_counter() - start
    return result


SHUFFLE_MODES = ("train", "all", "none")


def build_lmdb(src: str | Path, out: str | Path, options: ConvertOptions, *, root: str | Path | None = None,
               classes: int | None = None, val_fraction: float | None = None,
               limits: dict[str, int] | None = None) -> tuple[DataManifest, list[SplitResult]]:
    """SRC's images -> OUT's databases, mean, labels and manifest. `val_fraction` as `layouts.discover` (None: 10%
    of train per class held out where SRC has no val split); the share held out is in the manifest's options."""
    if options.shuffle not in SHUFFLE_MODES:
        raise UserError(f"shuffle {options.shuffle!r}: choose one of {', '.join(SHUFFLE_MODES)}")
    if options.pad < 0 or options.pad_mode not in PAD_MODES:
        raise UserError(f"--pad {options.pad} --pad-mode {options.pad_mode}: a border of 0 or more pixels, "
                        f"mode one of {', '.join(PAD_MODES)}")
    dataset = discover(src, root=root, classes=classes, val_fraction=val_fraction, seed=options.seed, limits=limits)
    out = Path(out)
    unknown = [s for s in options.splits if s not in ("train", "val", "test")]
    if unknown:
        raise UserError(f"--splits: unknown split {unknown[0]!r} (choose from train, val, test)")
    splits = [s for s in options.splits if dataset.splits.get(s)]
    if "train" not in splits:
        raise UserError(f"{src}: no training images found")
    ensure_writable_dir(out)
    existing = [out / f"{s}_lmdb" for s in splits if (out / f"{s}_lmdb").exists()]
    if existing and not options.force:
        raise UserError(f"{existing[0]}: a database already exists there; pass --force to replace it")
    remove_stale_temporaries(out)
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        manifest_path.unlink()  # the directory is incomplete until the new manifest is written
    results = [convert_split(dataset, s, out / f"{s}_lmdb", options) for s in splits]
    skipped_lines = [f"{r.name}\t{path}\t{reason}\n" for r in results for path, reason in r.skipped]
    atomic_write_text(out / "skipped.txt", "".join(skipped_lines))
    atomic_write_text(out / "labels.txt", dataset.labels_txt())
    train = next(r for r in results if r.name == "train")  # the mean and the manifest's image size come from it
    exact = mean_from_pixel_sums(train.pixel_sums, train.count) if train.pixel_sums is not None else None
    try:
        if exact is not None:  # summed by the workers; equal to what reading the database back gives
            mean_values, _ = save_mean(out / "mean.binaryproto", *exact, train.count)
        else:
            mean_values, _ = write_mean(out / "train_lmdb", out / "mean.binaryproto")
    except MixedSizesError:  # encoded images of several sizes: no mean image, per-channel means still work
        mean_values = channel_means(out / "train_lmdb")
    # the dataset's own spread per channel (inside any padding), for per-channel std normalization
    _, std_values = channel_stats(out / "train_lmdb", border=options.pad)
    shape = train.shape or (1 if options.gray else 3, 0, 0)
    stored = (options.resize[0] + 2 * options.pad, options.resize[1] + 2 * options.pad) if options.resize \
        else tuple(shape[1:])
    manifest = DataManifest(
        classes=dataset.classes, channels=shape[0], height=stored[0], width=stored[1],
        splits={r.name: {"db": f"{r.name}_lmdb", "count": r.count, "skipped": len(r.skipped), "bytes": r.bytes,
                         "keys_sha256": r.keys_sha256, "labelled": dataset.labelled.get(r.name, True)}
                for r in results},
        mean_values=mean_values, std_values=std_values, pad=options.pad,
        encoded=options.encoded, layout=dataset.layout,
        options={"resize": list(options.resize) if options.resize else None, "gray": options.gray,
                 "pad": options.pad, "pad_mode": options.pad_mode,
                 "encoded": options.encoded, "shuffle": options.shuffle, "seed": options.seed,
                 "val_fraction": dataset.val_held_out, "limits": limits or {}, "source": str(Path(src).resolve())})
    write_manifest(out, manifest)
    return manifest, results

