"""Canonical Huffman coding of small alphabets (cluster indices, relative positions).

A canonical code is fully described by each symbol's code length, so a table costs one byte per symbol.
Codes are limited to MAX_LENGTH bits (frequencies are flattened until the tree fits), which lets the decoder
look a code up in one table of 2^MAX_LENGTH entries. Bits are written most significant first.
"""

from __future__ import annotations

import heapq

import numpy as np

MAX_LENGTH = 16


class HuffmanError(ValueError):
    """A code table or bitstream that cannot be decoded."""


def _tree_lengths(freqs: np.ndarray) -> np.ndarray:
    lengths = np.zeros(len(freqs), np.int64)
    present = [int(s) for s in np.flatnonzero(freqs)]
    if len(present) == 1:
        lengths[present[0]] = 1
        return lengths
    heap = [(int(freqs[s]), s, [s]) for s in present]  # (weight, tie-breaker, symbols under this node)
    heapq.heapify(heap)
    while len(heap) > 1:
        fa, ta, a = heapq.heappop(heap)
        fb, tb, b = heapq.heappop(heap)
        for s in a + b:
            lengths[s] += 1
        heapq.heappush(heap, (fa + fb, min(ta, tb), a + b))
    return lengths


def code_lengths(freqs: np.ndarray, limit: int = MAX_LENGTH) -> np.ndarray:
    """Code length (0 = unused) of each symbol for these frequencies, at most `limit` bits."""
    f = np.asarray(freqs, np.int64)
    if not f.any():
        return np.zeros(len(f), np.uint8)
    lengths = _tree_lengths(f)
    while lengths.max() > limit:  # flatten: the rare symbols move toward the common ones, the tree gets shallower
        f = np.where(f > 0, f // 2 + 1, 0)
        lengths = _tree_lengths(f)
    return lengths.astype(np.uint8)


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code of each symbol (codes of one length are consecutive, in symbol order)."""
    lengths = np.asarray(lengths, np.int64)
    codes = np.zeros(len(lengths), np.int64)
    code, previous = 0, 0
    for s in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[s]) - previous
        previous = int(lengths[s])
        codes[s] = code
        code += 1
    if previous and code > (1 << previous):
        raise HuffmanError("code lengths over-subscribe the code space")
    return codes


def encode(symbols: np.ndarray, lengths: np.ndarray) -> tuple[bytes, int]:
    """(packed bytes, number of bits) of `symbols` under the canonical code of `lengths`."""
    symbols = np.asarray(symbols, np.int64).reshape(-1)
    if symbols.size == 0:
        return b"", 0
    lengths = np.asarray(lengths, np.int64)
    codes = canonical_codes(lengths)
    sym_len = lengths[symbols]
    if (sym_len == 0).any():
        raise HuffmanError("a symbol without a code")
    sym_code = codes[symbols]
    ends = np.cumsum(sym_len)
    starts = ends - sym_len
    bits = np.zeros(int(ends[-1]), np.uint8)
    for j in range(int(sym_len.max())):
        has = sym_len > j
        bits[starts[has] + j] = (sym_code[has] >> (sym_len[has] - 1 - j)) & 1
    return np.packbits(bits).tobytes(), int(ends[-1])


def decode(data: bytes, nbits: int, lengths: np.ndarray, count: int) -> np.ndarray:
    """`count` symbols from the first `nbits` bits of `data`; HuffmanError when the stream does not hold them."""
    lengths = np.asarray(lengths, np.int64)
    if count == 0:
        return np.zeros(0, np.int64)
    if nbits > 8 * len(data) or nbits <= 0:
        raise HuffmanError(f"stream of {len(data)} bytes cannot hold {nbits} bits")
    if not lengths.any() or lengths.max() > MAX_LENGTH:
        raise HuffmanError("no valid code table")
    codes = canonical_codes(lengths)
    width = int(lengths.max())
    table_sym = np.full(1 << width, -1, np.int64)
    table_len = np.zeros(1 << width, np.int64)
    for s in np.flatnonzero(lengths):
        n = int(lengths[s])
        lo = int(codes[s]) << (width - n)
        table_sym[lo:lo + (1 << (width - n))] = s
        table_len[lo:lo + (1 << (width - n))] = n
    bits = np.concatenate([np.unpackbits(np.frombuffer(data, np.uint8))[:nbits].astype(np.int64),
                           np.zeros(width, np.int64)])
    window = np.zeros(nbits, np.int64)  # the next `width` bits at every position
    for j in range(width):
        window = (window << 1) | bits[j:j + nbits]
    sym_at = table_sym[window].tolist()
    len_at = table_len[window].tolist()
    out = [0] * count
    p = 0
    for i in range(count):
        if p >= nbits or len_at[p] == 0:
            raise HuffmanError(f"stream ends after {i} of {count} symbols" if p >= nbits else "invalid code")
        out[i] = sym_at[p]
        p += len_at[p]
    if p > nbits:
        raise HuffmanError(f"the last symbol runs past the stream's {nbits} bits")
    return np.asarray(out, np.int64)
