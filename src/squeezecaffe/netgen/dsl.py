"""A small layer DSL driven by the schema's descriptors (the idea of Caffe's NetSpec).

    n = NetBuilder("demo")
    data, label = n.layer("Input", tops=["data", "label"], shape=[dict(dim=[1, 3, 64, 64]), dict(dim=[1])])
    c = n.layer("Convolution", data, name="conv1", num_output=96, kernel_size=3, pad=1)

A keyword goes to the LayerParameter field of that name when there is one (param, include,
loss_weight, transform_param, ...); otherwise to the layer type's own parameter message, found
by its message name `<Type>Parameter` (so `num_output` lands in `convolution_param`). There is
no hand-kept list of layers: a message added to the schema works here at once. A keyword that
fits nowhere fails at build time with the layer, the keyword and the fields it could have been.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from squeezecaffe.caffe_rules.checks import NetRuleError
from squeezecaffe.proto import pb


class NetgenError(NetRuleError):
    """A net definition that cannot be built (unknown keyword, missing blob, duplicate top)."""


def _type_param_fields() -> dict[str, str]:
    """Map a layer type to its `*_param` field by the field's message name (ConvolutionParameter -> Convolution)."""
    mapping = {}
    for field in pb.LayerParameter.DESCRIPTOR.fields:
        if field.message_type is not None and field.name.endswith("_param"):
            type_name = field.message_type.name.removesuffix("Parameter")
            mapping[type_name] = field.name
    return mapping


TYPE_PARAM_FIELD = _type_param_fields()
_LAYER_FIELDS = pb.LayerParameter.DESCRIPTOR.fields_by_name


def param_fields_for(layer_type: str) -> list[str]:
    """The `*_param` fields a layer type's keywords may go to, in lookup order.

    `SoftmaxWithLoss` reads softmax_param and loss_param; any `*Loss` type reads loss_param.
    """
    fields = []
    if layer_type in TYPE_PARAM_FIELD:
        fields.append(TYPE_PARAM_FIELD[layer_type])
    if layer_type.endswith("WithLoss"):
        base = layer_type.removesuffix("WithLoss")
        if base in TYPE_PARAM_FIELD:
            fields.append(TYPE_PARAM_FIELD[base])
    if layer_type.endswith("Loss"):
        fields.append("loss_param")
    return fields


def _convert_scalar(field: FieldDescriptor, value: Any, where: str) -> Any:
    if field.enum_type is not None:
        if isinstance(value, str):
            enum_value = field.enum_type.values_by_name.get(value)
            if enum_value is None:
                names = ", ".join(field.enum_type.values_by_name)
                raise NetgenError(f"{where}: '{value}' is not one of {names}")
            return enum_value.number
        return int(value)
    return value


def assign(msg: Message, name: str, value: Any, where: str = "") -> None:
    """Set field `name` of `msg` from a plain Python value, recursively, guided by the descriptor.

    dicts fill sub-messages, lists fill repeated fields (a scalar is taken as a one-element list),
    enum values may be given by name.
    """
    where = where or msg.DESCRIPTOR.name
    field = msg.DESCRIPTOR.fields_by_name.get(name)
    if field is None:
        raise NetgenError(f"{where}: {msg.DESCRIPTOR.name} has no field '{name}'")
    where = f"{where}.{name}"
    if field.is_repeated:
        container = getattr(msg, name)
        values = value if isinstance(value, list | tuple) else [value]
        for item in values:
            if field.message_type is not None:
                fill(container.add(), item, where)
            else:
                container.append(_convert_scalar(field, item, where))
    elif field.message_type is not None:
        fill(getattr(msg, name), value, where)
    else:
        try:
            setattr(msg, name, _convert_scalar(field, value, where))
        except (TypeError, ValueError) as exc:
            raise NetgenError(f"{where}: bad value {value!r} ({exc})") from None


def fill(msg: Message, value: Mapping[str, Any] | Message, where: str = "") -> None:
    """Fill a message from a dict (or copy another message of the same type)."""
    if isinstance(value, Message):
        msg.CopyFrom(value)
        return
    if not isinstance(value, Mapping):
        raise NetgenError(f"{where or msg.DESCRIPTOR.name}: expected a dict for {msg.DESCRIPTOR.name}, got {value!r}")
    for key, item in value.items():
        assign(msg, key, item, where)


def make_layer(
    layer_type: str,
    name: str,
    bottoms: Iterable[str] = (),
    tops: Iterable[str] = (),
    **kwargs: Any,
) -> pb.LayerParameter:
    """Build one LayerParameter; keywords are routed as the module docstring says."""
    layer = pb.LayerParameter(name=name, type=layer_type)
    layer.bottom.extend(bottoms)
    layer.top.extend(tops)
    where = f"layer '{name}' ({layer_type})"
    targets = param_fields_for(layer_type)
    for key, value in kwargs.items():
        if value is None:
            continue
        if key in _LAYER_FIELDS:
            assign(layer, key, value, where)
            continue
        for param_field in targets:
            param_msg = getattr(layer, param_field)
            if key in param_msg.DESCRIPTOR.fields_by_name:
                assign(param_msg, key, value, where)
                break
        else:
            known = sorted(
                f for pf in targets for f in getattr(layer, pf).DESCRIPTOR.fields_by_name
            )
            hint = f"; its parameters are: {', '.join(known)}" if known else "; this type takes no parameters"
            raise NetgenError(f"{where}: unknown argument '{key}'{hint}")
    return layer


class NetBuilder:
    """Accumulates layers into a NetParameter and hands back top names to wire the next layer.

    The builder tracks the blobs defined so far, so a bottom that does not exist fails where
    the layer is added, naming the layer and the blob.
    """

    def __init__(self, name: str) -> None:
        self.net = pb.NetParameter(name=name)
        self._blobs: set[str] = set()
        self._names: set[str] = set()

    def layer(
        self,
        layer_type: str,
        *bottoms: str,
        name: str | None = None,
        tops: Iterable[str] | None = None,
        **kwargs: Any,
    ) -> str | tuple[str, ...]:
        """Append a layer; returns its top (or tuple of tops). `tops` defaults to [name].

        In-place layers pass `tops=[bottom]`. Layers for one phase only (include=...) may reuse a
        name that the other phase's twin has, as Caffe's train_val files do for Data layers.
        """
        if name is None:
            raise NetgenError(f"a {layer_type} layer needs a name")
        for bottom in bottoms:
            if bottom not in self._blobs:
                raise NetgenError(f"layer '{name}' ({layer_type}): bottom blob '{bottom}' is not produced by any earlier layer")
        top_list = list(tops) if tops is not None else [name]
        layer = make_layer(layer_type, name, bottoms, top_list, **kwargs)
        if name in self._names and not layer.include:
            raise NetgenError(f"layer '{name}' ({layer_type}): a layer of that name already exists")
        self._names.add(name)
        self._blobs.update(top_list)
        self.net.layer.append(layer)
        return top_list[0] if len(top_list) == 1 else tuple(top_list)
