"""`build-lmdb`: a dataset folder or list -> one LMDB per split + mean + labels + manifest.

Each split is written by parallel_write.py's workers in list order. Each database is written under a temporary
name and renamed into place when complete; the manifest is written last, so a data directory with a manifest is
always complete.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from squeezecaffe.caffe_rules.decoding import forced_decoding
from squeezecaffe.data_tools.decode import PAD_MODES, DecodeOptions
from squeezecaffe.data_tools.layouts import Dataset, discover
from squeezecaffe.data_tools.lmdb_io import (
    AtomicLmdbWriter,
    BackgroundSync,
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
from squeezecaffe.data_tools.parallel_write import (
    Collector,
    SplitJob,
    Turns,
    Workers,
    chunk_bounds,
    worker_count,
    write_chunks,
)
from squeezecaffe.errors import UserError
from squeezecaffe.fileio import atomic_write_text, ensure_writable_dir
from squeezecaffe.options import NOT_AN_OPTION, option


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
    shape: tuple[int, int, int] | None = None  # the first record's
    shapes: set[tuple[int, int, int]] = field(default_factory=set)  # every size written
    keys_sha256: str = ""
    pixel_sums: np.ndarray | None = None  # exact sums of the raw images written (HxWxC), for the mean


def convert_split(dataset: Dataset, split: str, out_db: Path, options: ConvertOptions) -> SplitResult:
    items = list(dataset.splits[split])
    if options.shuffle == "all" or (options.shuffle == "train" and split == "train"):
        random.Random(options.seed).shuffle(items)
    jobs = worker_count(len(items), options.jobs)
    writer = AtomicLmdbWriter(out_db)
    job = SplitJob(dataset.root, items, DecodeOptions(gray=options.gray, resize=options.resize,
                                                       encoded=options.encoded, pad=options.pad,
                                                       pad_mode=options.pad_mode),
                    writer.tmp, same_size=not options.resize and not options.encoded,
                    bounds=chunk_bounds(len(items), jobs))
    result = SplitResult(split)
    start = time.perf_counter()
    workers = bar = flusher = None
    try:
        # Workers first: forking once the progress bar's or the flusher's thread runs is unsafe.
        workers = Workers(job, jobs) if jobs > 1 else None
        bar = tqdm(total=len(items), desc=f"{split:5s}", unit="img", disable=not options.progress, leave=False)
        collect = Collector(bar)
        flusher = BackgroundSync(writer.data_file)
        if workers is None:
            write_chunks(job, range(job.chunks), Turns(), collect)
        else:
            workers.relay(collect)
        flusher.stop()
        flusher = None
        result.count, result.bytes, result.shape, result.shapes = collect.count, collect.bytes, collect.shape, \
            collect.shapes
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


def empty_classes(dataset: Dataset) -> list[int]:
    """Labels below the class count with no training image (a 1-based list file leaves class 0 empty)."""
    present = {label for _, label in dataset.splits.get("train", [])}
    return [label for label in range(dataset.classes) if label not in present]


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
    decoded = forced_decoding(1 if options.gray else 3)  # encoded files as decoded here and by the nets (not natively)
    # Several sizes, within a split (encoded, no --resize) or between splits (each split's own size): no net that
    # takes its input whole can read them all (solvers/settings.py refuses it).
    mixed_sizes = len(set().union(*(r.shapes for r in results))) > 1
    try:
        if exact is not None:  # summed by the workers; equal to what reading the database back gives
            mean_values, _ = save_mean(out / "mean.binaryproto", *exact, train.count)
        else:
            mean_values, _ = write_mean(out / "train_lmdb", out / "mean.binaryproto", decoded)
    except MixedSizesError:  # train's images differ in size: no mean image, per-channel means still work
        mean_values = channel_means(out / "train_lmdb", decoded)
        for stale in (out / "mean.binaryproto", out / "mean.json"):  # an earlier build's (--force)
            stale.unlink(missing_ok=True)
    # the dataset's own spread per channel (inside any padding), for per-channel std normalization
    _, std_values = channel_stats(out / "train_lmdb", border=options.pad, color=decoded)
    shape = train.shape or (1 if options.gray else 3, 0, 0)
    stored = (options.resize[0] + 2 * options.pad, options.resize[1] + 2 * options.pad) if options.resize \
        else tuple(shape[1:])
    manifest = DataManifest(
        classes=dataset.classes, channels=shape[0], height=stored[0], width=stored[1],
        splits={r.name: {"db": f"{r.name}_lmdb", "count": r.count, "skipped": len(r.skipped), "bytes": r.bytes,
                         "keys_sha256": r.keys_sha256, "labelled": dataset.labelled.get(r.name, True)}
                for r in results},
        mean_values=mean_values, std_values=std_values, pad=options.pad,
        encoded=options.encoded, mixed_sizes=mixed_sizes, layout=dataset.layout,
        options={"resize": list(options.resize) if options.resize else None, "gray": options.gray,
                 "pad": options.pad, "pad_mode": options.pad_mode,
                 "encoded": options.encoded, "shuffle": options.shuffle, "seed": options.seed,
                 "val_fraction": dataset.val_held_out, "limits": limits or {}, "source": str(Path(src).resolve()),
                 "ignored": dataset.ignored, "empty_classes": empty_classes(dataset)})
    write_manifest(out, manifest)
    return manifest, results

