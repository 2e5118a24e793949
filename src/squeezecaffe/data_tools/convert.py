"""`build-lmdb`: a dataset folder or list -> one LMDB per split + mean + labels + manifest.

Decoding runs in worker processes (ordered, so keys keep the list's order); the parent only
writes, committing large transactions. Each database is written under a temporary name and
renamed into place when complete; the manifest is written last, so a data directory with a
manifest is always complete.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import random
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tqdm import tqdm

from squeezecaffe.data_tools.decode import DecodeOptions, make_datum
from squeezecaffe.data_tools.layouts import Dataset, discover
from squeezecaffe.data_tools.lmdb_io import AtomicLmdbWriter, datum_key, remove_stale_temporaries
from squeezecaffe.data_tools.manifest import DataManifest, write_manifest
from squeezecaffe.data_tools.mean import MixedSizesError, channel_means, write_mean
from squeezecaffe.errors import UserError
from squeezecaffe.fileio import atomic_write_text, ensure_writable_dir


@dataclass
class ConvertOptions:
    resize: tuple[int, int] | None = None
    gray: bool = False
    encoded: bool = False
    shuffle: bool = False
    seed: int = 0
    jobs: int = 0  # 0 = all cores
    max_skip: float = 0.01  # fraction of a split that may fail before the command fails
    force: bool = False
    splits: tuple[str, ...] = ("train", "val", "test")
    progress: bool = True


@dataclass
class SplitResult:
    name: str
    count: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    shape: tuple[int, int, int] | None = None
    keys_sha256: str = ""


def _decode_chunk(items: list[tuple[int, str, int]], root: Path, opts: DecodeOptions) -> list[tuple]:
    """Runs in a worker. Plain tuples, not dataclasses: the parent unpickles them, and it is the bottleneck."""
    out = []
    for index, rel, label in items:
        d = make_datum(root / rel, label, index, opts)
        out.append((d.index, d.value, d.shape, d.reason))
    return out


def _chunks(seq: list, size: int) -> list[list]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def convert_split(dataset: Dataset, split: str, out_db: Path, options: ConvertOptions) -> SplitResult:
    items = list(dataset.splits[split])
    if options.shuffle:
        random.Random(options.seed).shuffle(items)
    dec = DecodeOptions(gray=options.gray, resize=options.resize, encoded=options.encoded)
    indexed = [(i, rel, label) for i, (rel, label) in enumerate(items)]
    jobs = options.jobs or os.cpu_count() or 1
    result = SplitResult(split)
    writer = AtomicLmdbWriter(out_db)
    keys = hashlib.sha256()
    start = time.perf_counter()
    bar = tqdm(total=len(items), desc=f"{split:5s}", unit="img", disable=not options.progress, leave=False)
    try:
        work = partial(_decode_chunk, root=dataset.root, opts=dec)
        chunks = _chunks(indexed, 256)
        if jobs == 1:
            stream = map(work, chunks)
            pool = None
        else:
            # fork: workers inherit the imported modules, so they start in milliseconds.
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
            pool = ctx.Pool(jobs)
            stream = pool.imap(work, chunks)
        written = 0
        for decoded_chunk in stream:
            for index, value, shape, reason in decoded_chunk:
                rel = items[index][0]
                if value is None:
                    result.skipped.append((rel, reason))
                    continue
                if not options.resize and result.shape is not None and shape != result.shape and not options.encoded:
                    result.skipped.append((rel, f"size {shape[1]}x{shape[2]} differs from the database's "
                                                f"{result.shape[1]}x{result.shape[2]}; use --resize HxW"))
                    continue
                result.shape = result.shape or shape
                # Keys number the records written, as convert_imageset counts only successful images.
                key = datum_key(written, rel)
                writer.put(key, value)
                keys.update(key + b"\n")
                written += 1
            bar.update(len(decoded_chunk))
        if pool is not None:
            pool.close()
            pool.join()
        result.count = written
        result.bytes = writer.bytes
        result.keys_sha256 = keys.hexdigest()
        limit = options.max_skip * len(items)
        if len(result.skipped) > limit:
            writer.abort()
            first = result.skipped[0]
            hint = f" (paths are read relative to {dataset.root}; see --root)" if first[1] == "file not found" else ""
            raise UserError(f"{split}: {len(result.skipped)} of {len(items)} images failed (more than --max-skip "
                            f"{options.max_skip:.0%}); first: {first[0]}: {first[1]}{hint}")
        if written == 0:
            writer.abort()
            raise UserError(f"{split}: no image could be converted")
        writer.commit(force=options.force)
    except BaseException:
        if writer.tmp.exists():
            writer.abort()
        raise
    finally:
        bar.close()
    result.seconds = time.perf_counter() - start
    return result


def build_lmdb(src: str | Path, out: str | Path, options: ConvertOptions, *, root: str | Path | None = None,
               classes: int | None = None, val_fraction: float = 0.0,
               limits: dict[str, int] | None = None) -> tuple[DataManifest, list[SplitResult]]:
    dataset = discover(src, root=root, classes=classes, val_fraction=val_fraction, seed=options.seed, limits=limits)
    out = Path(out)
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
    try:
        mean_values, _ = write_mean(out / "train_lmdb", out / "mean.binaryproto")
    except MixedSizesError:  # encoded images of several sizes: no mean image, per-channel means still work
        mean_values = channel_means(out / "train_lmdb")
    shape = results[0].shape or (1 if options.gray else 3, 0, 0)
    manifest = DataManifest(
        classes=dataset.classes, channels=shape[0], height=(options.resize or shape[1:])[0],
        width=(options.resize or shape[1:])[1],
        splits={r.name: {"db": f"{r.name}_lmdb", "count": r.count, "skipped": len(r.skipped), "bytes": r.bytes,
                         "keys_sha256": r.keys_sha256, "labelled": dataset.labelled.get(r.name, True)}
                for r in results},
        mean_values=mean_values, encoded=options.encoded, layout=dataset.layout,
        options={"resize": list(options.resize) if options.resize else None, "gray": options.gray,
                 "encoded": options.encoded, "shuffle": options.shuffle, "seed": options.seed,
                 "val_fraction": val_fraction, "limits": limits or {}, "source": str(Path(src).resolve())})
    write_manifest(out, manifest)
    return manifest, results

