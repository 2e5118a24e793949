"""Batches for a Caffe Data layer: LMDB records in database order, transformed as Caffe does.

Caffe's Data layer reads the database sequentially and wraps around at the end; batch k holds
records k*B .. k*B+B-1 (mod the size). We keep that order, and draw each record's random crop and
mirror from a generator seeded by (seed, record position), so batches are the same for any number
of worker processes and a resumed run can seek straight to the position an uninterrupted run
would have reached.

With `in_memory`, the database is decoded once into one uint8 tensor on the training device and
batches are gathered from it there, each record's draws made exactly as the workers make them.
"""

from __future__ import annotations

import signal
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from squeezecaffe.data_tools.lmdb_io import LmdbReader
from squeezecaffe.data_tools.transform import DataTransformer
from squeezecaffe.engines.torchcaffe.device_transform import DeviceTransform
from squeezecaffe.errors import UserError
from squeezecaffe.fileio import resolve_beside
from squeezecaffe.proto import pb


class _Records(Dataset):
    """Record position -> (transformed float32 CxHxW image, label), or with `raw` (the device transform):
    (uint8 CxHxW image, label, (row, column) crop offset, mirror), the draws made exactly as the CPU path."""

    def __init__(self, reader: LmdbReader, transformer: DataTransformer, seed: int, raw: bool = False) -> None:
        self.reader, self.transformer, self.seed, self.raw = reader, transformer, seed, raw

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, position: int):
        img, label = self.reader[position % len(self.reader)]
        rng = _record_rng(self.seed, position)
        if self.raw:
            h_off, w_off, mirror = self.transformer.draw(img.shape[1], img.shape[2], rng)
            return img, label, (h_off, w_off), mirror
        return self.transformer(img, rng), label


def _record_rng(seed: int, position: int) -> np.random.Generator:
    """The generator of one record position's crop and mirror draws, whichever path makes them."""
    return np.random.default_rng([seed, position])


class _Decoded:
    """A database's pixels and labels as tensors on one device (what InMemoryRecords gathers from)."""

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor) -> None:
        self.pixels, self.labels = pixels, labels


# Decoded databases by (path, colour, device, file size and time): the BatchNorm statistics net reads the training
# database as the training net does, and holding it twice would double the decoding time and the (GPU) memory.
# Weak values: a database is freed with the last net that uses it.
_DECODED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _decoded(reader: LmdbReader, device: torch.device, where: str) -> _Decoded:
    stat = (reader.path / "data.mdb").stat()  # a database rewritten in place is decoded anew
    key = (str(reader.path.resolve()), reader.color, str(device), stat.st_size, stat.st_mtime_ns)
    cached = _DECODED.get(key)
    if cached is not None:
        return cached
    first, _ = reader[0]
    count, shape = len(reader), tuple(first.shape)
    needed = count * int(np.prod(shape))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if needed > free // 2:
            raise UserError(f"{where}: --data-in-memory needs {needed / 2**30:.2f} GiB of {device} for "
                            f"{reader.path}, more than half of the {free / 2**30:.2f} GiB free; leave it off")
    pixels = np.empty((count, *shape), np.uint8)
    labels = np.empty(count, np.float32)
    for i, (img, label) in enumerate(reader):
        if img.shape != shape:
            raise UserError(f"{where}: --data-in-memory needs one image size, but record {i} of {reader.path} is "
                            f"{'x'.join(map(str, img.shape))} and the first {'x'.join(map(str, shape))} "
                            "(rebuild the database with --resize)")
        pixels[i] = img
        labels[i] = label
    decoded = _Decoded(torch.from_numpy(pixels).to(device), torch.from_numpy(labels).to(device))
    _DECODED[key] = decoded
    return decoded


class InMemoryRecords:
    """A whole database decoded once into one uint8 N x C x H x W tensor (and its labels) on a device.

    Batches are gathered from it by record position, with the crop and mirror of every record drawn
    as the workers draw them: the loader's batches, without worker processes, decoding or moving
    pixels from the host after the first pass. The database must hold one image size, and on a GPU
    take at most half of its free memory.
    """

    def __init__(self, reader: LmdbReader, transformer: DataTransformer, seed: int, device: str, where: str) -> None:
        self.transformer, self.seed, self.device = transformer, seed, torch.device(device)
        self.decoded = _decoded(reader, self.device, where)
        self.pixels, self.labels = self.decoded.pixels, self.decoded.labels

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def batch(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(uint8 pixels and labels on the device, crop offsets and mirror flags on the host) of `positions`."""
        _, _, height, width = self.pixels.shape
        offsets, mirror = _draw_tensors([self.transformer.draw(height, width, _record_rng(self.seed, p))
                                         for p in positions])
        index = torch.tensor([p % len(self) for p in positions]).to(self.device, non_blocking=True)
        return self.pixels[index], self.labels[index], offsets, mirror


class _SequentialBatches(Sampler[list[int]]):
    """Endless batches of consecutive record positions from `start` (mutable between iterations).

    With `world` > 1 processes, a global batch is `batch_size x world` consecutive positions and this rank
    takes every world-th of them from `rank` on (Caffe's multi-GPU Data layers interleave records alike).
    """

    def __init__(self, batch_size: int, start: int = 0, rank: int = 0, world: int = 1) -> None:
        self.batch_size, self.start, self.rank, self.world = batch_size, start, rank, world

    @property
    def stride(self) -> int:
        """Positions consumed per batch by all ranks together."""
        return self.batch_size * self.world

    def __iter__(self) -> Iterator[list[int]]:
        pos = self.start
        while True:
            yield list(range(pos + self.rank, pos + self.stride, self.world))
            pos += self.stride


def _stack(samples: list, hint: str) -> torch.Tensor:
    """The images of one batch as one tensor; they must share a shape."""
    shapes = {s[0].shape for s in samples}
    if len(shapes) > 1:
        raise UserError(f"images of different sizes in one batch ({sorted(shapes)}): {hint}")
    return torch.from_numpy(np.stack([s[0] for s in samples]))


# What a job runner sends to stop a job (scancel, systemd, a terminal's Ctrl-C or hang-up) goes to the whole process
# group: the training process must decide (finish the iteration, snapshot, exit), not its data workers. PyTorch's
# workers die on a SIGTERM that is not from their parent, which ends the run in a traceback with no snapshot. They
# ignore these signals instead; the main process ends them as always (its shutdown message, or their watch on it).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _ignore_stop_signals(worker_id: int) -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _collate(samples: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    data = _stack(samples, "set crop_size or rebuild the database with --resize")
    return data, torch.tensor([s[1] for s in samples], dtype=torch.float32)


def _collate_raw(samples: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 pixels (the device transform's input), labels, crop offsets, mirror flags."""
    pixels = _stack(samples, "--gpu-transform needs one image size (rebuild the database with --resize)")
    labels = torch.tensor([s[1] for s in samples], dtype=torch.float32)
    offsets, mirror = _draw_tensors([(*s[2], s[3]) for s in samples])
    return pixels, labels, offsets, mirror


def _draw_tensors(draws: list[tuple[int, int, bool]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) crop offsets as N x 2 int64 and mirror flags as N bools: DeviceTransform's inputs."""
    offsets = torch.tensor([(h, w) for h, w, _ in draws], dtype=torch.int64).reshape(-1, 2)
    return offsets, torch.tensor([m for _, _, m in draws], dtype=torch.bool)


class DataLayerLoader:
    """The batches one Data layer produces, with worker processes, pinned memory and prefetch."""

    def __init__(self, lp: pb.LayerParameter, phase: int, seed: int = 0, workers: int = 0, pin_memory: bool = False,
                 prefetch: int = 4, base_dir: Path | None = None, where: str = "net", rank: int = 0,
                 world: int = 1, device_transform: str | None = None, in_memory: bool = False) -> None:
        dp = lp.data_param
        name = f"{where}: layer '{lp.name}' (Data)"
        if not dp.source:
            raise UserError(f"{name}: data_param.source is not set")
        if dp.batch_size <= 0:
            raise UserError(f"{name}: data_param.batch_size must be > 0")
        tp = lp.transform_param
        color = "gray" if tp.force_gray else "color" if tp.force_color else "native"
        source = resolve_beside(dp.source, base_dir)
        try:
            self.reader = LmdbReader(source, color=color)
        except UserError as exc:
            raise UserError(f"{name}: {exc}") from None
        if len(self.reader) == 0:
            raise UserError(f"{name}: database {source} is empty")
        self.transformer = DataTransformer(tp, phase, where=f"{name} transform_param", base_dir=base_dir)
        first, _ = self.reader[0]
        self.batch_size = int(dp.batch_size)
        self.shape = (self.batch_size, *self.transformer.output_shape(*first.shape))
        self.source = source
        self.sampler = _SequentialBatches(self.batch_size, rank=rank, world=world)
        # device_transform: ship uint8 pixels and apply crop/mean/scale/mirror on that device (DeviceTransform)
        self.device_transform = DeviceTransform(self.transformer, device_transform) if device_transform else None
        self.memory: InMemoryRecords | None = None
        self.loader: DataLoader | None = None
        if in_memory:
            if self.device_transform is None:
                raise UserError(f"{name}: the in-memory dataset needs the device transform (a device to live on)")
            self.memory = InMemoryRecords(self.reader, self.transformer, seed, device_transform, name)
        else:
            self.loader = DataLoader(
                _Records(self.reader, self.transformer, seed, raw=self.device_transform is not None),
                batch_sampler=self.sampler, num_workers=workers,
                collate_fn=_collate_raw if self.device_transform else _collate, pin_memory=pin_memory,
                prefetch_factor=prefetch if workers else None, persistent_workers=workers > 0,
                worker_init_fn=_ignore_stop_signals if workers else None,
            )
        self._it: Iterator | None = None

    def __len__(self) -> int:
        return len(self.reader)

    @property
    def position(self) -> int:
        return self.sampler.start

    def seek(self, position: int) -> None:
        """Continue from record `position` (counted from the start of the run, before wrapping)."""
        self.sampler.start = position
        self._it = None

    def close(self) -> None:
        """Stop the worker processes (persistent while the loader lives) and let go of an in-memory database. A
        process that trains several runs one after another (a benchmark, compress's stages) would otherwise keep
        every earlier run's workers until the garbage collector meets the nets."""
        self._it = None
        if self.loader is not None:
            iterator = getattr(self.loader, "_iterator", None)  # the persistent workers' iterator, if started
            self.loader = None
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
        self.memory = None

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.loader is None and self.memory is None:
            raise RuntimeError(f"{self.source}: this Data layer's loader was closed")
        if self._it is None:
            self._it = iter(self.sampler if self.memory is not None else self.loader)
        batch = next(self._it)
        self.sampler.start += self.sampler.stride  # the position of the next batch (the iterator runs ahead)
        if self.memory is not None:
            pixels, labels, offsets, mirror = self.memory.batch(batch)
            return self.device_transform(pixels, offsets, mirror), labels
        if self.device_transform is not None:
            pixels, labels, offsets, mirror = batch
            return self.device_transform(pixels, offsets, mirror), labels.to(self.device_transform.device)
        return batch
