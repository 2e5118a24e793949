"""A caffemodel with quantized weight blobs <-> a `.sqz` container.

A coded blob is stored as its codebook (float32 shared values), the Huffman code lengths and bitstream of its
entries' cluster indices, and, when pruned, the code lengths and bitstream of the entries' relative positions
(sparse.py; filler entries carry the extra cluster symbol K). A blob with nothing pruned stores no positions.
Every other blob (biases, BatchNorm and Scale) is stored as little-endian float32, its bytes regrouped by position
in the float (all first bytes, then all second bytes, ...: the sign/exponent bytes repeat) and deflated; lossless.
Decoding gives back the quantized values bit for bit: codebook[index] where kept, +0.0 where pruned.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from squeezecaffe.compress import huffman
from squeezecaffe.compress.container import Container, SectionWriter, pack
from squeezecaffe.compress.sparse import from_relative, to_relative
from squeezecaffe.errors import UserError
from squeezecaffe.fileio import first_line
from squeezecaffe.proto import pb, set_float_data


@dataclass
class CodedBlob:
    """A quantized weight blob: cluster index per weight (-1 = pruned) and the shared values."""

    codebook: np.ndarray  # float32 [K]
    clusters: np.ndarray  # int, the blob's shape
    bits: int
    index_bits: int

    def values(self) -> np.ndarray:
        return np.where(self.clusters >= 0, self.codebook[np.maximum(self.clusters, 0)], np.float32(0)).astype(
            np.float32)


def _shuffle(raw: bytes) -> bytes:
    return np.frombuffer(raw, np.uint8).reshape(-1, 4).T.tobytes()


def _unshuffle(raw: bytes) -> bytes:
    if len(raw) % 4:
        return raw  # the length check that follows names the problem
    return np.frombuffer(raw, np.uint8).reshape(4, -1).T.tobytes()


def _trimmed_lengths(symbols: np.ndarray, alphabet: int) -> np.ndarray:
    lengths = huffman.code_lengths(np.bincount(symbols, minlength=alphabet))
    used = np.flatnonzero(lengths)
    return lengths[: int(used[-1]) + 1] if used.size else lengths[:0]


def _encode_stream(sections: SectionWriter, symbols: np.ndarray, alphabet: int) -> tuple[dict, dict]:
    lengths = _trimmed_lengths(symbols, alphabet)
    data, nbits = huffman.encode(symbols, lengths)
    return sections.add(lengths.astype(np.uint8).tobytes()), sections.add(data, bits=nbits)


def encode_blob(blob: CodedBlob, sections: SectionWriter) -> dict:
    flat = blob.clusters.reshape(-1).astype(np.int64)
    k = len(blob.codebook)
    if flat.size and (flat.max() >= k or flat.min() < -1):
        raise ValueError("cluster index outside the codebook")
    kept = np.flatnonzero(flat >= 0)
    entry: dict = {"encoding": "coded", "shape": list(blob.clusters.shape), "bits": blob.bits, "clusters": k,
                   "kept": int(kept.size), "codebook": sections.add(blob.codebook.astype("<f4").tobytes())}
    if kept.size == flat.size:
        entry.update(layout="dense", entries=int(flat.size))
        entry["weight_code"], entry["weights"] = _encode_stream(sections, flat, k + 1)
        return entry
    gaps, is_filler = to_relative(kept, blob.index_bits)
    symbols = np.full(gaps.size, k, np.int64)
    symbols[~is_filler] = flat[kept]
    entry.update(layout="sparse", entries=int(gaps.size), index_bits=blob.index_bits)
    entry["weight_code"], entry["weights"] = _encode_stream(sections, symbols, k + 1)
    entry["gap_code"], entry["gaps"] = _encode_stream(sections, gaps, 1 << blob.index_bits)
    return entry


def _decode_stream(box: Container, entry: dict, code: str, stream: str, count: int, name: str) -> np.ndarray:
    lengths = np.frombuffer(box.section(entry[code], f"{name}/{code}"), np.uint8)
    data = box.section(entry[stream], f"{name}/{stream}")
    try:
        return huffman.decode(data, int(entry[stream].get("bits", 0)), lengths, count)
    except huffman.HuffmanError as exc:
        raise UserError(f"{box.where}: section {name}/{stream}: {exc}") from None


def decode_blob(box: Container, entry: dict, name: str) -> np.ndarray:
    """The float32 values of one blob entry (coded or float32)."""
    try:
        shape = tuple(int(d) for d in entry["shape"])
        count = int(np.prod(shape))
        if entry["encoding"] == "float32":
            raw = box.section(entry["data"], f"{name}/data")
            try:
                raw = _unshuffle(zlib.decompress(raw))
            except zlib.error as exc:
                raise UserError(f"{box.where}: section {name}/data does not inflate ({exc})") from None
            if len(raw) != 4 * count:
                raise UserError(f"{box.where}: section {name}/data holds {len(raw)} bytes for {count} values")
            return np.frombuffer(raw, "<f4").astype(np.float32).reshape(shape)
        if entry["encoding"] != "coded":
            raise UserError(f"{box.where}: {name}: unknown encoding '{entry['encoding']}'")
        k, entries, kept = int(entry["clusters"]), int(entry["entries"]), int(entry["kept"])
        codebook = np.frombuffer(box.section(entry["codebook"], f"{name}/codebook"), "<f4")
        if codebook.size != k:
            raise UserError(f"{box.where}: section {name}/codebook holds {codebook.size} values, the header says {k}")
        symbols = _decode_stream(box, entry, "weight_code", "weights", entries, name)
        out = np.zeros(count, np.float32)
        if entry["layout"] == "dense":
            if entries != count or (symbols >= k).any():
                raise UserError(f"{box.where}: section {name}/weights does not describe {count} dense weights")
            out[:] = codebook[symbols]
            return out.reshape(shape)
        positions = from_relative(_decode_stream(box, entry, "gap_code", "gaps", entries, name))
        real = symbols < k
        if int(real.sum()) != kept or (positions.size and positions[-1] >= count):
            raise UserError(f"{box.where}: section {name}/gaps does not describe {kept} weights in {count} places")
        out[positions[real]] = codebook[symbols[real]]
        return out.reshape(shape)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{box.where}: {name}: malformed header entry ({exc})") from None


def encode_model(model: pb.NetParameter, coded: dict[str, CodedBlob], header: dict) -> tuple[bytes, dict[str, int]]:
    """The .sqz bytes of `model` with `coded` (layer -> its weight blob) quantized; and bytes per layer."""
    from squeezecaffe.caffe_rules.blobs import blob_shape, blob_values

    sections = SectionWriter()
    layers, sizes = [], {}
    for lp in model.layer:
        if not len(lp.blobs):
            continue
        start = sections.size
        blobs = []
        for i, blob in enumerate(lp.blobs):
            if i == 0 and lp.name in coded:
                blobs.append(encode_blob(coded[lp.name], sections))
            else:
                values = blob_values(blob).astype("<f4")
                blobs.append({"encoding": "float32", "shape": list(blob_shape(blob)),
                              "data": sections.add(zlib.compress(_shuffle(values.tobytes()), 9))})
        layers.append({"name": lp.name, "type": lp.type, "blobs": blobs})
        sizes[lp.name] = sections.size - start
    return pack({"net": model.name, **header, "layers": layers}, sections), sizes


def decode_model(box: Container) -> pb.NetParameter:
    """A dense NetParameter (a .caffemodel's message) with every layer's blobs, as encoded. The header's CRC says it
    is what was written, not that a writer wrote it well: a layer or blob entry of the wrong shape (a missing key, a
    string where a number belongs) is one line naming the file, like every other damage."""
    try:
        return _decode_model(box)
    # (sizes from the header drive allocations: an absurd count is a MemoryError or OverflowError, not our bug)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError, OverflowError, MemoryError) as exc:
        raise UserError(f"{box.where}: the header's layer entries are malformed ({type(exc).__name__}: "
                        f"{first_line(exc)[:120]})") from None


def _decode_model(box: Container) -> pb.NetParameter:
    out = pb.NetParameter(name=str(box.header.get("net", "")))
    layers = box.header.get("layers")
    if not isinstance(layers, list):
        raise UserError(f"{box.where}: the header lists no layers")
    for layer in layers:
        lp = out.layer.add(name=str(layer.get("name")), type=str(layer.get("type")))
        for i, entry in enumerate(layer.get("blobs", [])):
            values = decode_blob(box, entry, f"{lp.name}/blob{i}")
            blob = lp.blobs.add()
            blob.shape.dim.extend(values.shape)
            set_float_data(blob, values.reshape(-1))
    return out
