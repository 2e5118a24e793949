""".caffemodel reading as numpy: a binary NetParameter whose layers carry their blobs, and a blob's shape and values.

Blob shapes may be stored the current way (`shape`) or the legacy way (num/channels/height/width, right-aligned: an
InnerProduct weight N x K used to be 1 x 1 x N x K). Nothing here needs torch: compress, export and the evaluation
read weights with these.
"""

from __future__ import annotations

import os

import numpy as np

from squeezecaffe.errors import UserError
from squeezecaffe.proto import pb, read_binary


def blob_shape(blob: pb.BlobProto) -> tuple[int, ...]:
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    return tuple(int(v) for v in (blob.num, blob.channels, blob.height, blob.width))


def shapes_match(blob: pb.BlobProto, target: tuple[int, ...]) -> bool:
    """Caffe's Blob::ShapeEquals, legacy 4-D form included."""
    if blob.HasField("shape"):
        return blob_shape(blob) == target
    if len(target) > 4:
        return False
    padded = (1,) * (4 - len(target)) + tuple(target)
    return padded == blob_shape(blob)


def blob_values(blob: pb.BlobProto) -> np.ndarray:
    if len(blob.double_data):
        return np.asarray(blob.double_data, dtype=np.float64)
    return np.asarray(blob.data, dtype=np.float32)


def read_caffemodel(path: str | os.PathLike) -> pb.NetParameter:
    model = read_binary(path, pb.NetParameter)
    if not len(model.layer):
        raise UserError(f"{path}: no layers in this caffemodel (the pre-2015 V1 'layers' format is not read; "
                        "upgrade it with Caffe's upgrade_net_proto_binary)")
    return model
