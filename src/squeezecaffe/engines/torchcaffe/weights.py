"""A CaffeNet's weights to and from a .caffemodel (the file itself is read as numpy by caffe_rules/blobs.py).

Layers are matched by name as Caffe's CopyTrainedLayersFrom does: layers of the file that the net
lacks are ignored, layers of the net the file lacks keep their initialisation, and a blob count or
shape that differs is an error naming the layer and both shapes. Writing is atomic: a reader never sees
half a file under the final name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from squeezecaffe.caffe_rules.blobs import blob_shape, blob_values, read_caffemodel, shapes_match
from squeezecaffe.errors import UserError
from squeezecaffe.proto import pb, set_float_data, write_binary


def tensor_to_blob(t: torch.Tensor) -> pb.BlobProto:
    blob = pb.BlobProto()
    blob.shape.dim.extend(int(d) for d in t.shape)
    set_float_data(blob, t.detach().to("cpu", torch.float32).contiguous().numpy().ravel())
    return blob


@dataclass
class LoadReport:
    copied: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # net layers with blobs the file did not have
    ignored: list[str] = field(default_factory=list)  # file layers with blobs the net does not have


def copy_weights(net, model: pb.NetParameter, source: str = "caffemodel") -> LoadReport:
    """Copy the blobs of `model` into the CaffeNet `net`, layer by layer name."""
    by_name = {layer.name: layer for layer in model.layer if len(layer.blobs)}
    report = LoadReport()
    net_names = set(net.layer_names)
    for name, module in zip(net.layer_names, net.layers, strict=True):
        if not len(module.blobs):
            continue
        source_layer = by_name.get(name)
        if source_layer is None:
            report.missing.append(name)
            continue
        if len(source_layer.blobs) != len(module.blobs):
            raise UserError(f"{source}: layer '{name}' has {len(source_layer.blobs)} blobs, the net expects "
                            f"{len(module.blobs)}")
        for i, (blob, target) in enumerate(zip(source_layer.blobs, module.blobs, strict=True)):
            shape = tuple(target.shape)
            if not shapes_match(blob, shape):
                raise UserError(f"{source}: layer '{name}' blob {i} has shape {'x'.join(map(str, blob_shape(blob)))}, "
                                f"the net expects {'x'.join(map(str, shape))}")
            values = torch.from_numpy(blob_values(blob).reshape(shape))
            with torch.no_grad():
                target.copy_(values.to(target.dtype))
        report.copied.append(name)
    report.ignored = [n for n in by_name if n not in net_names]
    return report


def load_caffemodel(net, path: str | os.PathLike) -> LoadReport:
    return copy_weights(net, read_caffemodel(path), str(path))


def net_to_proto(net) -> pb.NetParameter:
    """The net's layers (as filtered for its phase) with their current blobs, as Caffe's Net::ToProto."""
    out = pb.NetParameter(name=net.param.name)
    for lp, module in zip(net.filtered.layer, net.layers, strict=True):
        layer = out.layer.add()
        layer.CopyFrom(lp)
        del layer.blobs[:]
        if not layer.HasField("phase"):
            layer.phase = net.state.phase
        layer.blobs.extend(tensor_to_blob(b) for b in module.blobs)
    return out


def save_caffemodel(net, path: str | os.PathLike) -> Path:
    """Write atomically: a reader never sees a half-written file under the final name."""
    return write_binary(path, net_to_proto(net))
