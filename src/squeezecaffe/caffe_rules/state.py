"""Caffe's NetState rules: which layers of a prototxt exist in a given phase/level/stage."""

from __future__ import annotations

from collections.abc import Iterable

from squeezecaffe.proto import pb


def state_meets_rule(state: pb.NetState, rule: pb.NetStateRule) -> bool:
    """A rule holds when every condition it sets holds (phase, level bounds, stages)."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def layer_included(layer: pb.LayerParameter, state: pb.NetState) -> bool:
    """Caffe's rule: with include rules, ANY must hold; with exclude rules, NONE may; else always."""
    if layer.include:
        return any(state_meets_rule(state, r) for r in layer.include)
    if layer.exclude:
        return not any(state_meets_rule(state, r) for r in layer.exclude)
    return True


def make_state(phase: int | str = "TEST", level: int = 0, stages: Iterable[str] = ()) -> pb.NetState:
    if isinstance(phase, str):
        phase = pb.Phase.Value(phase)
    return pb.NetState(phase=phase, level=level, stage=list(stages))


def filter_net(net: pb.NetParameter, state: pb.NetState) -> pb.NetParameter:
    """A copy of `net` holding only the layers present in `state` (as Caffe's Net::FilterNet)."""
    out = pb.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    out.layer.extend(layer for layer in net.layer if layer_included(layer, state))
    out.state.CopyFrom(state)
    return out
