"""IDX files (the MNIST distribution's format): a big-endian header of magic number and dimensions, then raw
unsigned bytes; MNIST and Fashion-MNIST ship four of them, often gzipped."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from squeezecaffe.errors import UserError

IDX_DTYPES = {0x08: np.uint8}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally .gz) as an array; the header says the element type and the dimensions."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, EOFError) as exc:
        raise UserError(f"{path}: not a readable gzip file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise UserError(f"{path}: not an IDX file (bad magic number)")
    dtype, ndim = raw[2], raw[3]
    if dtype not in IDX_DTYPES:
        raise UserError(f"{path}: IDX element type 0x{dtype:02x} is not supported (expected unsigned bytes)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path}: IDX header is cut off")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise UserError(f"{path}: IDX file holds {len(raw)} bytes, its header {'x'.join(map(str, dims))} "
                        f"needs {expected}")
    return np.frombuffer(raw, IDX_DTYPES[dtype], offset=header).reshape(dims)
