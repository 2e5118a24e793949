"""One image file -> one Datum, exactly as Caffe's convert_imageset makes it.

Raw: `cv::imread(path, IMREAD_COLOR or IMREAD_GRAYSCALE)`, optional `cv::resize` (bilinear),
stored as uint8 CHW (BGR). Encoded: the original file bytes when no conversion is needed,
else the converted image re-encoded in the file's own format.
Runs in the converter's worker processes and never raises on bad images: a bad file is a reason.
"""

from __future__ import annotations

import os
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
    pad: int = 0  # border added on every side after the resize (build-lmdb --pad)
    pad_mode: str = "reflect"


# reflect: mirrored without repeating the edge pixel (numpy's and torchvision's 'reflect'); zero: black
# Encoded Datums keep the file's own bytes only in the formats every image library reads (suffix -> the encoder
# a resized or padded image is written with); other formats are stored as PNG.
PORTABLE_ENCODINGS = {".jpg": ".jpg", ".jpeg": ".jpg", ".jpe": ".jpg", ".jfif": ".jpg", ".png": ".png",
                      ".bmp": ".bmp", ".dib": ".bmp"}
PAD_MODES = {"reflect": cv2.BORDER_REFLECT_101, "zero": cv2.BORDER_CONSTANT}


def pad_image(img: np.ndarray, pad: int, mode: str) -> np.ndarray:
    """`pad` pixels on every side. Caffe's transform has no padding, so a padded training set (random crops of
    the padded image; the centre crop is the image itself) is stored padded."""
    if not pad:
        return img
    return cv2.copyMakeBorder(img, pad, pad, pad, pad, PAD_MODES[mode], value=0)


@dataclass
class Decoded:
    """A worker's answer for one image: the serialized Datum, or why it was skipped."""

    value: bytes | None
    shape: tuple[int, int, int] | None  # (C, H, W) of the decoded image
    reason: str = ""
    image: np.ndarray | None = None  # HxWxC (or HxW) pixels as stored in a raw Datum, for the mean


def _looks_truncated(data: bytes) -> bool:
    """A JPEG must end with its EOI marker; libjpeg pads a cut-off file with grey and only warns."""
    return data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-4096:]


def decode_image(data: bytes, gray: bool) -> np.ndarray | None:
    """HxWxC uint8 BGR (or HxW gray) as cv2.imread(path, flag) gives it; None when not decodable."""
    if not data or _looks_truncated(data):
        return None
    flag = cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR
    return cv2.imdecode(np.frombuffer(data, np.uint8), flag)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def raw_datum_bytes(img: np.ndarray, label: int) -> bytes:
    """The serialized Datum Caffe's CVMatToDatum makes of an image: uint8 CHW pixels, BGR.

    Written field by field (channels=1, height=2, width=3, data=4, label=5, encoded=7: the order
    protobuf serializes them in) because building a `pb.Datum` copies the 12 KB of pixels three
    times and costs a fifth of the converter's time; tests pin the bytes to `pb.Datum`'s.
    `encoded: false` is written, as CVMatToDatum sets it explicitly. A label is an int32: negative
    ones take ten bytes, as protobuf writes them.
    """
    chw = img[None] if img.ndim == 2 else img.transpose(2, 0, 1)
    channels, height, width = chw.shape
    pixels = chw.tobytes()
    head = b"\x08" + _varint(channels) + b"\x10" + _varint(height) + b"\x18" + _varint(width)
    tail = b"\x28" + _varint(label & 0xFFFFFFFFFFFFFFFF) + b"\x38\x00"
    return b"".join((head, b"\x22", _varint(len(pixels)), pixels, tail))


def _read_file(path: Path) -> bytes:
    """The whole file in one read of its size (Path.read_bytes costs twice as much on small files)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        data = os.read(fd, size + 1)  # one byte more: a file that grew is read whole below
        while len(data) > size:
            more = os.read(fd, 1 << 20)
            if not more:
                break
            data += more
        return data
    finally:
        os.close(fd)


def read_image(path: Path, gray: bool, resize: tuple[int, int] | None = None, pad: int = 0,
               pad_mode: str = "reflect") -> tuple[np.ndarray | None, bytes, str]:
    """(image, file bytes, "") as build-lmdb decodes a file, or (None, bytes, why it cannot be used).

    Shared by the converter and by classify, so an image is prepared the same way for training and
    for prediction (same flags, same resize, same padding).
    """
    try:
        data = _read_file(path)
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
    return pad_image(img, pad, pad_mode), data, ""


def make_datum(path: Path, label: int, opts: DecodeOptions) -> Decoded:
    img, data, reason = read_image(path, opts.gray, opts.resize, opts.pad, opts.pad_mode)
    if img is None:
        return Decoded(None, None, reason)
    shape = (1 if img.ndim == 2 else img.shape[2], img.shape[0], img.shape[1])
    if not opts.encoded:
        return Decoded(raw_datum_bytes(img, label), shape, image=img)
    # As convert_imageset: without a resize the decoded image always has the channel count asked for,
    # so the original file is stored untouched; a resized (or padded) image is re-encoded in the file's own format.
    # Other formats (TIFF, WebP, JPEG 2000, PxM) are stored as PNG of the decoded image, the same pixels, so that
    # any Caffe reader's image library decodes the database, not only one built with those codecs.
    encoder = PORTABLE_ENCODINGS.get(path.suffix.lower())
    if encoder and not opts.resize and not opts.pad:
        return Decoded(pb.Datum(data=data, label=label, encoded=True).SerializeToString(), shape)
    ok, buf = cv2.imencode(encoder or ".png", img)
    if not ok:
        return Decoded(None, None, f"cannot re-encode as {encoder or '.png'}")
    return Decoded(pb.Datum(data=buf.tobytes(), label=label, encoded=True).SerializeToString(), shape)
