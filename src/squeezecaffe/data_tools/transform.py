"""Caffe's DataTransformer on uint8 CHW (BGR) arrays, independent of any framework.

out = (pixel - mean) * scale, where the mean is the full-size mean image at the crop's offset
(mean_file) or one value per channel (mean_value); then the crop is mirrored. TRAIN crops at a
random offset, TEST at the centre; with `mirror` set, either phase mirrors with probability 1/2
(DataTransformer::Transform draws the coin without looking at the phase; netgen sets mirror in TRAIN only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from squeezecaffe.errors import UserError
from squeezecaffe.fileio import resolve_beside
from squeezecaffe.proto import pb, read_binary


def blob_to_array(blob: pb.BlobProto) -> np.ndarray:
    """A BlobProto's values shaped by `shape` or by the legacy num/channels/height/width."""
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:
        shape = tuple(int(v) for v in (blob.num, blob.channels, blob.height, blob.width))
    values = blob.double_data if len(blob.double_data) else blob.data
    arr = np.asarray(values, dtype=np.float64 if len(blob.double_data) else np.float32)
    if arr.size != int(np.prod(shape)):
        raise UserError(f"blob holds {arr.size} values for shape {'x'.join(map(str, shape))}")
    return arr.reshape(shape)


def read_mean_file(path: str | Path) -> np.ndarray:
    """A compute_image_mean .binaryproto as a float32 CxHxW array."""
    arr = blob_to_array(read_binary(path, pb.BlobProto)).astype(np.float32)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise UserError(f"{path}: mean blob has shape {arr.shape}, expected 1xCxHxW")
    return arr


class DataTransformer:
    def __init__(self, tp: pb.TransformationParameter, phase: int, where: str = "transform_param",
                 base_dir: Path | None = None) -> None:
        self.train = phase == pb.TRAIN
        self.scale = np.float32(tp.scale)
        self.mirror = tp.mirror
        self.crop = int(tp.crop_size)
        self.where = where
        self.mean_image: np.ndarray | None = None
        self.mean_values: np.ndarray | None = None
        if tp.HasField("mean_file") and len(tp.mean_value):
            raise UserError(f"{where}: give mean_file or mean_value, not both")
        if tp.HasField("mean_file"):
            self.mean_image = read_mean_file(resolve_beside(tp.mean_file, base_dir))
        elif len(tp.mean_value):
            self.mean_values = np.asarray(tp.mean_value, np.float32)

    def output_shape(self, channels: int, height: int, width: int) -> tuple[int, int, int]:
        if self.crop:
            if self.crop > height or self.crop > width:
                raise UserError(f"{self.where}: crop_size {self.crop} is larger than the images ({height}x{width})")
            return channels, self.crop, self.crop
        return channels, height, width

    def draw(self, height: int, width: int, rng: np.random.Generator | None) -> tuple[int, int, bool]:
        """(crop row offset, crop column offset, mirror) for one image: the TRAIN draws, in Caffe's order."""
        h_off = w_off = 0
        if self.crop:
            if self.crop > height or self.crop > width:
                raise UserError(f"{self.where}: crop_size {self.crop} is larger than an image ({height}x{width})")
            if self.train:
                h_off = int(rng.integers(height - self.crop + 1))
                w_off = int(rng.integers(width - self.crop + 1))
            else:
                h_off, w_off = (height - self.crop) // 2, (width - self.crop) // 2
        do_mirror = self.mirror and bool(rng.integers(2))
        return h_off, w_off, do_mirror

    def check_mean(self, channels: int, height: int, width: int) -> None:
        if self.mean_image is not None and self.mean_image.shape != (channels, height, width):
            raise UserError(f"{self.where}: mean image is {'x'.join(map(str, self.mean_image.shape))}, "
                            f"the data {channels}x{height}x{width}")
        if self.mean_values is not None and len(self.mean_values) not in (1, channels):
            raise UserError(f"{self.where}: {len(self.mean_values)} mean_value for {channels} channels")

    def __call__(self, img: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """Transform one uint8 CxHxW image; `rng` draws the TRAIN crop offset and the mirror coin."""
        c, h, w = img.shape
        h_off, w_off, do_mirror = self.draw(h, w, rng)
        oh, ow = (self.crop, self.crop) if self.crop else (h, w)
        self.check_mean(c, h, w)
        out = img[:, h_off : h_off + oh, w_off : w_off + ow].astype(np.float32)
        if self.mean_image is not None:
            out -= self.mean_image[:, h_off : h_off + oh, w_off : w_off + ow]
        elif self.mean_values is not None:
            out -= self.mean_values.reshape(-1, 1, 1)
        if self.scale != 1:
            out *= self.scale
        if do_mirror:
            out = out[:, :, ::-1]
        return np.ascontiguousarray(out)
