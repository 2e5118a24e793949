"""One image file -> one Datum, exactly as Caffe's convert_imageset makes it.

Raw: `cv::imread(path, IMREAD_COLOR or IMREAD_GRAYSCALE)`, optional `cv::resize` (bilinear),
stored as uint8 CHW (BGR). Encoded: the original file bytes when no conversion is needed,
else the converted image re-encoded in the file's own format.
Runs in worker processes, so it returns plain picklable values and never raises on bad images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from squeezecaffe.proto import pb


@dataclass(frozen=True)
class DecodeOptions:
    gray: bool = False
    resize: tuple[int, int] | None = None  # (height, width)
    encoded: bool = False


@dataclass
class Decoded:
    """A worker's answer for one image: the serialized Datum, or why it was skipped."""

    index: int
    value: bytes | None
    shape: tuple[int, int, int] | None  # (C, H, W) of the decoded image
    reason: str = ""


def _looks_truncated(data: bytes) -> bool:
    """A JPEG must end with its EOI marker; libjpeg pads a cut-off file with grey and only warns."""
    return data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-4096:]


def decode_image(data: bytes, gray: bool) -> np.ndarray | None:
    """HxWxC uint8 BGR (or HxW gray) as cv2.imread(path, flag) gives it; None when not decodable."""
    if not data or _looks_truncated(data):
        return None
    flag = cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR
    return cv2.imdecode(np.frombuffer(data, np.uint8), flag)


def image_to_datum(img: np.ndarray, label: int) -> pb.Datum:
    chw = img[None] if img.ndim == 2 else img.transpose(2, 0, 1)
    # Caffe's CVMatToDatum sets encoded=false explicitly, so the field is on the wire (2 bytes).
    return pb.Datum(channels=chw.shape[0], height=chw.shape[1], width=chw.shape[2],
                    data=np.ascontiguousarray(chw).tobytes(), label=label, encoded=False)


def read_image(path: Path, gray: bool, resize: tuple[int, int] | None = None) -> tuple[np.ndarray | None, bytes, str]:
    """(image, file bytes, "") as build-lmdb decodes a file, or (None, bytes, why it cannot be used).

    Shared by the converter and by classify, so an image is prepared the same way for training and
    for prediction (same flags, same resize).
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, b"", "file not found"
    except IsADirectoryError:
        return None, b"", "is a directory"
    except OSError as exc:
        return None, b"", f"cannot read ({exc.strerror})"
    if not data:
        return None, data, "empty file (0 bytes)"
    img = decode_image(data, gray)
    if img is None:
        reason = "truncated JPEG (no end-of-image marker)" if _looks_truncated(data) else "not a decodable image"
        return None, data, reason
    if resize:
        h, w = resize
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    return img, data, ""


def make_datum(path: Path, label: int, index: int, opts: DecodeOptions) -> Decoded:
    img, data, reason = read_image(path, opts.gray, opts.resize)
    if img is None:
        return Decoded(index, None, None, reason)
    shape = (1 if img.ndim == 2 else img.shape[2], img.shape[0], img.shape[1])
    if not opts.encoded:
        return Decoded(index, image_to_datum(img, label).SerializeToString(), shape)
    # As convert_imageset: without a resize the decoded image always has the channel count asked for,
    # so the original file is stored untouched; a resized image is re-encoded in the file's own format.
    if not opts.resize:
        return Decoded(index, pb.Datum(data=data, label=label, encoded=True).SerializeToString(), shape)
    suffix = path.suffix.lower()
    ok, buf = cv2.imencode(suffix if suffix in (".jpg", ".jpeg", ".png", ".bmp") else ".png", img)
    if not ok:
        return Decoded(index, None, None, f"cannot re-encode as {suffix}")
    return Decoded(index, pb.Datum(data=buf.tobytes(), label=label, encoded=True).SerializeToString(), shape)
