"""Per-phase sanity checks of a net, run on everything we emit and on prototxt we load."""

from __future__ import annotations

from squeezecaffe.caffe_rules.state import filter_net, make_state
from squeezecaffe.errors import UserError
from squeezecaffe.proto import pb


class NetRuleError(UserError):
    """A net that breaks Caffe's wiring rules (a missing bottom, a duplicate top or layer name)."""

_INPUT_TYPES = {"Input", "Data", "ImageData", "DummyData", "HDF5Data", "MemoryData", "Python"}


def check_phase(net: pb.NetParameter, phase: str, source: str = "net") -> None:
    """Every bottom exists before use; tops are unique unless in place; layer names are unique."""
    filtered = filter_net(net, make_state(phase))
    produced: set[str] = set(net.input)
    names: set[str] = set()
    for layer in filtered.layer:
        where = f"{source} ({phase}): layer '{layer.name}' ({layer.type})"
        if not layer.name:
            raise NetRuleError(f"{source} ({phase}): a {layer.type} layer has no name")
        if layer.name in names:
            raise NetRuleError(f"{where}: duplicate layer name")
        names.add(layer.name)
        for bottom in layer.bottom:
            if bottom not in produced:
                raise NetRuleError(f"{where}: bottom blob '{bottom}' is not produced by any earlier layer")
        for top in layer.top:
            if top in produced and top not in layer.bottom:
                raise NetRuleError(f"{where}: top blob '{top}' is already produced by an earlier layer")
        produced.update(layer.top)


def check_net(net: pb.NetParameter, source: str = "net", phases: tuple[str, ...] = ("TRAIN", "TEST")) -> None:
    for phase in phases:
        check_phase(net, phase, source)
