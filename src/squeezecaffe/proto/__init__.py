"""Our Caffe-compatible schema (`sqcaffe_pb2`) and helpers to read and write its files.

`pb` is the generated module; its messages are wire- and text-compatible with Caffe's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

import numpy as np
from google.protobuf import message as _message
from google.protobuf import text_format

from squeezecaffe.errors import UserError
from squeezecaffe.fileio import atomic_write_bytes, atomic_write_text
from squeezecaffe.proto import sqcaffe_pb2 as pb

M = TypeVar("M", bound=_message.Message)

__all__ = ["parse_text", "pb", "read_binary", "read_text", "set_float_data", "to_text", "write_binary", "write_text"]


def parse_text(text: str, message_type: type[M], source: str = "<text>") -> M:
    """Parse Caffe text format; a syntax error becomes one line naming the source and position."""
    msg = message_type()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as exc:
        raise UserError(f"{source}: not a valid {message_type.__name__} prototxt: {exc}") from None
    return msg


def read_text(path: str | os.PathLike, message_type: type[M]) -> M:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read as text ({exc.__class__.__name__})") from None
    return parse_text(text, message_type, str(path))


def to_text(msg: _message.Message) -> str:
    return text_format.MessageToString(msg)


def write_text(path: str | os.PathLike, msg: _message.Message) -> Path:
    return atomic_write_text(path, to_text(msg))


def read_binary(path: str | os.PathLike, message_type: type[M]) -> M:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    msg = message_type()
    try:
        msg.ParseFromString(data)
    except _message.DecodeError as exc:
        raise UserError(f"{path}: not a valid binary {message_type.__name__} ({exc})") from None
    return msg


def write_binary(path: str | os.PathLike, msg: _message.Message) -> Path:
    return atomic_write_bytes(path, msg.SerializeToString())


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_PACKED_DATA_TAG = _varint(pb.BlobProto.DESCRIPTOR.fields_by_name["data"].number << 3 | 2)  # wire type 2: packed


def set_float_data(blob: pb.BlobProto, values) -> None:
    """Replace `blob.data` with `values` (any array-like, stored as float32).

    The values go in as the packed field's wire bytes (tag, length, little-endian floats) merged into the message:
    one copy of the buffer, where extending the repeated field from a Python list costs a conversion per value
    (~50x slower: a snapshot of every blob of a net, a mean file, a decoded model). The message it leaves is the
    same, byte for byte, as the one the list would have made."""
    raw = np.ascontiguousarray(values, dtype="<f4").tobytes()
    del blob.data[:]
    blob.MergeFromString(_PACKED_DATA_TAG + _varint(len(raw)) + raw)
