"""The mean image of a database, as Caffe's compute_image_mean writes it, plus per-channel means."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from squeezecaffe.data_tools.lmdb_io import LmdbReader, datum_to_array
from squeezecaffe.errors import UserError
from squeezecaffe.fileio import atomic_write_text
from squeezecaffe.proto import pb, write_binary


class MixedSizesError(UserError):
    """The database holds images of several sizes (encoded, no --resize): no mean image exists."""


def compute_mean(db: str | Path) -> tuple[pb.BlobProto, list[float], int]:
    """(mean BlobProto, per-channel means, image count).

    compute_image_mean sums in float32, image after image, then divides by the count in float32;
    doing the same here makes the file equal Caffe's byte for byte. The blob uses the legacy
    num/channels/height/width fields, as Caffe's tool does.
    """
    total: np.ndarray | None = None
    count = 0
    with LmdbReader(db) as reader:
        for key, datum in reader.iter_datums():
            img = datum_to_array(datum).astype(np.float32)
            if total is None:
                total = np.zeros_like(img, dtype=np.float32)
            elif img.shape != total.shape:
                raise MixedSizesError(f"{db}: record {key.decode(errors='replace')} is {img.shape}, earlier ones "
                                f"{total.shape}; a mean image needs one size (rebuild with --resize)")
            total += img
            count += 1
    if total is None:
        raise UserError(f"{db}: database is empty")
    mean = total / np.float32(count)
    c, h, w = mean.shape
    blob = pb.BlobProto(num=1, channels=c, height=h, width=w)
    blob.data.extend(mean.ravel().tolist())
    per_channel = [float(np.mean(mean[i], dtype=np.float64)) for i in range(c)]
    return blob, per_channel, count


def write_mean(db: str | Path, out: str | Path) -> tuple[list[float], Path]:
    """Write the .binaryproto and, beside it, `<name>.json` with the per-channel means (for mean_value)."""
    blob, per_channel, count = compute_mean(db)
    out = Path(out)
    write_binary(out, blob)
    json_path = out.with_suffix(".json")
    atomic_write_text(json_path, json.dumps({"mean_values_bgr": per_channel, "images": count,
                                             "shape": [blob.channels, blob.height, blob.width]}, indent=2) + "\n")
    return per_channel, json_path


def channel_means(db: str | Path) -> list[float]:
    """Per-channel means (BGR) over every pixel, for databases whose images differ in size."""
    sums, pixels = None, 0
    with LmdbReader(db, color="color") as reader:
        for img, _ in reader:
            s = img.reshape(img.shape[0], -1).sum(axis=1, dtype=np.float64)
            sums = s if sums is None else sums + s
            pixels += img.shape[1] * img.shape[2]
    if sums is None:
        raise UserError(f"{db}: database is empty")
    return [float(v / pixels) for v in sums]
