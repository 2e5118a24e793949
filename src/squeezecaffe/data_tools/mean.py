"""The mean image of a database, as Caffe's compute_image_mean writes it, plus per-channel means."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from squeezecaffe.data_tools.lmdb_io import LmdbReader
from squeezecaffe.errors import UserError
from squeezecaffe.fileio import atomic_write_text
from squeezecaffe.proto import pb, set_float_data, write_binary

# Every integer up to 2^24 is a float32: uint8 pixels summed in float32 stay exact, whatever the order,
# while each pixel's total is at most this (at least 65,793 images, more for darker pixels).
EXACT_FLOAT32_TOTAL = 1 << 24


class MixedSizesError(UserError):
    """The database holds images of several sizes (encoded, no --resize): no mean image exists."""


def mean_blob(total: np.ndarray, count: int) -> tuple[pb.BlobProto, list[float]]:
    """(mean BlobProto, per-channel means) of a float32 CxHxW sum of `count` images.

    compute_image_mean divides the float32 sum by the count in float32; doing the same here makes
    the file equal Caffe's byte for byte. The blob uses the legacy num/channels/height/width
    fields, as Caffe's tool does.
    """
    mean = total.astype(np.float32) / np.float32(count)
    c, h, w = mean.shape
    blob = pb.BlobProto(num=1, channels=c, height=h, width=w)
    set_float_data(blob, mean.ravel())
    per_channel = [float(np.mean(mean[i], dtype=np.float64)) for i in range(c)]
    return blob, per_channel


def mean_from_pixel_sums(sums: np.ndarray, count: int) -> tuple[pb.BlobProto, list[float]] | None:
    """The mean from exact integer sums of HxWxC (or HxW) images, or None where it would not be Caffe's.

    compute_image_mean adds images one by one in float32. While no pixel's total passes 2^24 every
    one of those additions is exact, so the float32 of the integer total is what it computes, in
    any order: the converter's workers can sum the images they write. Past that, Caffe's rounding
    depends on the order, and the caller reads the database in order instead (`compute_mean`).
    """
    if int(sums.max()) > EXACT_FLOAT32_TOTAL:
        return None
    chw = sums[None] if sums.ndim == 2 else sums.transpose(2, 0, 1)
    return mean_blob(chw.astype(np.float32), count)


def compute_mean(db: str | Path, color: str = "native") -> tuple[pb.BlobProto, list[float], int]:
    """(mean BlobProto, per-channel means, image count), summing in float32 image after image as
    compute_image_mean does. `color` decodes encoded records as datum_to_array says: 'native' is the tool's own
    rule; build-lmdb passes the channels it wrote, which is what the nets it sizes decode."""
    total: np.ndarray | None = None
    count = 0
    with LmdbReader(db) as reader:
        for key, datum in reader.iter_datums():
            img = reader.array(key, datum, color).astype(np.float32)
            if total is None:
                total = np.zeros_like(img, dtype=np.float32)
            elif img.shape[0] != total.shape[0]:
                raise UserError(f"{db}: record {key.decode(errors='replace')} has {img.shape[0]} channels, earlier "
                                f"ones {total.shape[0]} (encoded files decoded with their own channels: --decode "
                                "color or gray decodes them all alike)")
            elif img.shape != total.shape:
                raise MixedSizesError(f"{db}: record {key.decode(errors='replace')} is {img.shape}, earlier ones "
                                f"{total.shape}; a mean image needs one size (rebuild with --resize)")
            total += img
            count += 1
    if total is None:
        raise UserError(f"{db}: database is empty")
    return (*mean_blob(total, count), count)


def write_mean(db: str | Path, out: str | Path, color: str = "native") -> tuple[list[float], Path]:
    """Write the mean of a database as Caffe's .binaryproto and its per-channel means as JSON."""
    return save_mean(out, *compute_mean(db, color))


def save_mean(out: str | Path, blob: pb.BlobProto, per_channel: list[float], count: int) -> tuple[list[float], Path]:
    """Write the .binaryproto and, beside it, `<name>.json` with the per-channel means (for mean_value)."""
    out = Path(out)
    write_binary(out, blob)
    json_path = out.with_suffix(".json")
    atomic_write_text(json_path, json.dumps({"mean_values_bgr": per_channel, "images": count,
                                             "shape": [blob.channels, blob.height, blob.width]}, indent=2) + "\n")
    return per_channel, json_path


def channel_means(db: str | Path, color: str) -> list[float]:
    """Per-channel means (BGR) over every pixel, for databases whose images differ in size."""
    return channel_stats(db, color=color)[0]


def channel_stats(db: str | Path, border: int = 0, color: str = "native") -> tuple[list[float], list[float]]:
    """Per-channel means and standard deviations (BGR) over every pixel of every image, leaving out a `border`
    of padding (build-lmdb --pad), so the figures are the dataset's own."""
    sums = squares = None
    pixels = 0
    with LmdbReader(db, color=color) as reader:
        for img, _ in reader:
            if border:
                img = img[:, border:-border, border:-border]
            flat = img.reshape(img.shape[0], -1)
            s = flat.sum(axis=1, dtype=np.uint64)
            q = np.einsum("ij,ij->i", flat.astype(np.uint32), flat.astype(np.uint32), dtype=np.uint64)
            sums, squares = (s, q) if sums is None else (sums + s, squares + q)
            pixels += flat.shape[1]
    if sums is None or squares is None:
        raise UserError(f"{db}: database is empty")
    means = sums.astype(np.float64) / pixels
    stds = np.sqrt(np.maximum(squares.astype(np.float64) / pixels - means**2, 0.0))
    return [float(v) for v in means], [float(v) for v in stds]
