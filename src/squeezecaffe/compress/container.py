"""The `.sqz` file: one JSON header describing every layer and blob, then the binary sections it points to.

    offset  size  field
    0       4     magic b"SQZ1"
    4       4     header length H (uint32, little-endian)
    8       H     header: zlib-compressed UTF-8 JSON (see docs/compression.md)
    8+H     4     CRC-32 of the header bytes
    12+H    ...   payload: the sections, each {offset, length, crc32} in the header, offsets from here

Every section is checked against its CRC-32 before it is used, and the payload's total length is in the header,
so a truncated or corrupted file is named with the section that is bad, never read as a silently wrong model.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from squeezecaffe.errors import UserError

MAGIC = b"SQZ1"
FORMAT = "squeezecaffe-sqz"
VERSION = 1


@dataclass
class SectionWriter:
    """Collects sections; `add` returns the header entry that points at one."""

    chunks: list[bytes] = field(default_factory=list)
    size: int = 0

    def add(self, data: bytes, **extra) -> dict:
        entry = {"offset": self.size, "length": len(data), "crc32": zlib.crc32(data), **extra}
        self.chunks.append(data)
        self.size += len(data)
        return entry


def pack(header: dict, sections: SectionWriter) -> bytes:
    header = {"format": FORMAT, "version": VERSION, **header, "payload_length": sections.size}
    raw = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    return b"".join([MAGIC, struct.pack("<I", len(raw)), raw, struct.pack("<I", zlib.crc32(raw)), *sections.chunks])


class Container:
    """A read .sqz: its header and checked access to its sections."""

    def __init__(self, data: bytes, where: str) -> None:
        self.where = where
        if len(data) < 12 or data[:4] != MAGIC:
            raise UserError(f"{where}: not a .sqz file (no SQZ1 magic at the start)")
        (length,) = struct.unpack("<I", data[4:8])
        if 12 + length > len(data):
            raise UserError(f"{where}: truncated in the header ({len(data)} bytes, the header alone needs "
                            f"{12 + length})")
        raw = data[8:8 + length]
        (crc,) = struct.unpack("<I", data[8 + length:12 + length])
        if zlib.crc32(raw) != crc:
            raise UserError(f"{where}: the header is corrupted (CRC-32 mismatch)")
        try:
            self.header = json.loads(zlib.decompress(raw))
        except (zlib.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{where}: the header is not valid JSON ({exc})") from None
        if not isinstance(self.header, dict):
            raise UserError(f"{where}: the header is a JSON {type(self.header).__name__}, not an object")
        if self.header.get("format") != FORMAT or self.header.get("version") != VERSION:
            raise UserError(f"{where}: format {self.header.get('format')} version {self.header.get('version')} "
                            f"(this reader takes {FORMAT} version {VERSION})")
        self.payload = memoryview(data)[12 + length:]
        expected = self.header.get("payload_length")
        if expected != len(self.payload):
            state = "truncated" if isinstance(expected, int) and len(self.payload) < expected else "damaged"
            raise UserError(f"{where}: {state}: the payload holds {len(self.payload)} bytes, the header says "
                            f"{expected}")

    def section(self, entry: dict, name: str) -> bytes:
        """The bytes of one section, checked; `name` says which (layer, blob, part) in an error."""
        try:
            start, length, crc = int(entry["offset"]), int(entry["length"]), int(entry["crc32"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{self.where}: section {name}: malformed entry in the header") from None
        if start < 0 or length < 0 or start + length > len(self.payload):
            raise UserError(f"{self.where}: section {name} lies past the end of the file (truncated)")
        data = bytes(self.payload[start:start + length])
        if zlib.crc32(data) != crc:
            raise UserError(f"{self.where}: section {name} is corrupted (CRC-32 mismatch)")
        return data


def read_container(path: str | Path) -> Container:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror})") from None
    return Container(data, str(path))
