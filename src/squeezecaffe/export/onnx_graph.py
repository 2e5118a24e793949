"""A Caffe deploy net with its weights -> an ONNX graph with the same arithmetic, layer by layer.

Written from the prototxt (not traced from the torch engine), so every Caffe rule is stated here once:

- Pooling rounds its output size up (Caffe's ceil mode) and drops a last window that would start in the padding;
  the graph says the resulting size with explicit end padding and floor rounding, which every runtime computes
  the same way. MAX pads with -inf. AVE divides by the window clipped to the padded image, which ONNX's
  count_include_pad matches unless a window hangs past the padding (refused, with the layer named).
- Dropout is the identity at inference (Caffe scales at training time).
- BatchNorm's stored sums are divided by its scale factor (0 -> 0, as Caffe): y = (x - mean) / sqrt(var + eps).
  With `fold_batchnorm`, a Convolution followed by BatchNorm (and Scale) becomes one Convolution with
  W' = W * a and b' = b * a + beta - mean * a, a = gamma / sqrt(var + eps), computed in float64.
- InnerProduct flattens from its axis and multiplies by W^T (Gemm transB = 1).
- Softmax normalises along one axis (ONNX opset >= 13 semantics, which are Caffe's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from squeezecaffe.caffe_rules.shapes import conv_geometry, infer_layers, pool_geometry, pool_out
from squeezecaffe.caffe_rules.state import filter_net, make_state
from squeezecaffe.errors import UserError
from squeezecaffe.proto import pb

MIN_OPSET = 13
DEFAULT_OPSET = 17
SUPPORTED = ("Input", "Convolution", "ReLU", "Pooling", "Concat", "Eltwise", "Dropout", "InnerProduct", "Softmax",
             "BatchNorm", "Scale", "Power", "Slice")


@dataclass
class InputTransform:
    """Mean subtraction and scaling put in front of the net: the graph then takes pixel values (BGR, 0-255)."""

    mean: np.ndarray  # broadcastable to the input's C x H x W
    scale: float = 1.0


@dataclass
class Graph:
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    ops: dict[str, int] = field(default_factory=dict)
    taken: set[str] = field(default_factory=set)

    def fresh(self, name: str) -> str:
        candidate, n = name, 1
        while candidate in self.taken:
            n += 1
            candidate = f"{name}:{n}"
        self.taken.add(candidate)
        return candidate

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        tensor = numpy_helper.from_array(np.ascontiguousarray(value), self.fresh(name))
        self.initializers.append(tensor)
        return tensor.name

    def node(self, op: str, inputs: list[str], output: str, name: str, **attrs) -> str:
        from onnx import helper

        out = self.fresh(output)
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.fresh(f"{name}#{op}"), **attrs))
        self.ops[op] = self.ops.get(op, 0) + 1
        return out


def batchnorm_stats(blobs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    factor = float(blobs[2].reshape(-1)[0]) if len(blobs) > 2 else 1.0
    scale = 0.0 if factor == 0 else 1.0 / factor
    return blobs[0].astype(np.float64) * scale, blobs[1].astype(np.float64) * scale


def fold_batchnorm(net: pb.NetParameter, weights: dict[str, list[np.ndarray]]
                   ) -> tuple[pb.NetParameter, dict[str, list[np.ndarray]], int]:
    """Convolution -> BatchNorm [-> Scale] chains folded into the Convolution; returns the net without the folded
    layers, the new weights and how many BatchNorms were folded. A chain is folded only when nothing else reads
    the convolution's raw output (e.g. a bypass taken before the BatchNorm)."""
    layers = list(net.layer)
    weights = {k: list(v) for k, v in weights.items()}
    drop: set[int] = set()
    renames: dict[str, str] = {}
    folded = 0

    def read_later(blob: str, start: int, stop_at_write: bool = True) -> bool:
        for lp in layers[start:]:
            if blob in lp.bottom:
                return True
            if stop_at_write and blob in lp.top:
                return False
        return False

    for i, conv in enumerate(layers):
        if conv.type != "Convolution" or i + 1 >= len(layers):
            continue
        bn = layers[i + 1]
        out = conv.top[0]
        if bn.type != "BatchNorm" or list(bn.bottom) != [out] or (read_later(out, i + 2) and bn.top[0] != out):
            continue
        chain = [i + 1]
        last = bn.top[0]
        if i + 2 < len(layers):
            sc = layers[i + 2]
            if (sc.type == "Scale" and list(sc.bottom) == [last] and len(sc.bottom) == 1 and sc.scale_param.axis == 1
                    and sc.scale_param.num_axes == 1 and not (read_later(last, i + 3) and sc.top[0] != last)):
                chain.append(i + 2)
                last = sc.top[0]
        mean, var = batchnorm_stats(weights[bn.name])
        a = 1.0 / np.sqrt(var + bn.batch_norm_param.eps)
        shift = -mean * a
        if len(chain) == 2:
            sc = layers[chain[1]]
            gamma = weights[sc.name][0].astype(np.float64)
            beta = weights[sc.name][1].astype(np.float64) if sc.scale_param.bias_term else 0.0
            a, shift = a * gamma, shift * gamma + beta
        w = weights[conv.name][0].astype(np.float64)
        b = weights[conv.name][1].astype(np.float64) if len(weights[conv.name]) > 1 else np.zeros(w.shape[0])
        weights[conv.name] = [(w * a.reshape(-1, 1, 1, 1)).astype(np.float32), (b * a + shift).astype(np.float32)]
        drop.update(chain)
        if last != out:
            renames[last] = out
        folded += 1
    out_net = pb.NetParameter()
    out_net.CopyFrom(net)
    del out_net.layer[:]
    for i, lp in enumerate(layers):
        if i in drop:
            continue
        new = out_net.layer.add()
        new.CopyFrom(lp)
        if lp.type == "Convolution" and lp.name in weights and i + 1 in drop:
            new.convolution_param.bias_term = True
        for k, name in enumerate(new.bottom):
            new.bottom[k] = renames.get(name, name)
        for k, name in enumerate(new.top):
            if name in renames and lp.type != "Convolution":
                new.top[k] = renames[name]
    return out_net, weights, folded


def build_onnx(net: pb.NetParameter, weights: dict[str, list[np.ndarray]], *, opset: int = DEFAULT_OPSET,
               dynamic_batch: bool = False, transform: InputTransform | None = None,
               metadata: dict[str, str] | None = None, extra_outputs: list[str] | None = None):
    """The ONNX ModelProto of a TEST-phase deploy net (Input layer or input_shape), and the ops it uses."""
    from onnx import TensorProto, helper

    if opset < MIN_OPSET:
        raise UserError(f"--opset {opset}: at least {MIN_OPSET} (Softmax along one axis, as Caffe)")
    net = filter_net(net, make_state(pb.TEST))
    infos = {info.name: info for info in infer_layers(net, where=net.name or "deploy net")}
    g = Graph()
    current: dict[str, str] = {}
    inputs, consumed = [], set()
    for lp in net.layer:
        if lp.type not in SUPPORTED:
            raise UserError(f"layer '{lp.name}' of type {lp.type} has no ONNX export (supported: "
                            f"{', '.join(SUPPORTED)})")
        info = infos[lp.name]
        blobs = weights.get(lp.name, [])
        bottoms = [current[b] for b in lp.bottom]
        consumed.update(lp.bottom)
        if lp.type == "Input":
            for top, shape in zip(lp.top, info.top_shapes, strict=True):
                dims = ["batch" if dynamic_batch else int(shape[0]), *[int(d) for d in shape[1:]]]
                name = g.fresh(top)
                inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
                current[top] = name
                if transform is not None:
                    current[top] = _input_transform(g, name, transform, len(shape))
            continue
        emit = _EMITTERS[lp.type]
        outs = emit(g, lp, bottoms, blobs, info)
        for top, out in zip(lp.top, outs, strict=True):
            current[top] = out
    if len(net.input):  # legacy input/input_shape nets
        raise UserError("nets with the legacy 'input:' field are not exported; use an Input layer")
    final = [t for lp in net.layer for t in lp.top if t not in consumed and lp.type != "Input"]
    final = list(dict.fromkeys(final + [b for b in extra_outputs or [] if b not in final]))
    last_shapes = {t: s for lp in net.layer for t, s in zip(lp.top, infos[lp.name].top_shapes, strict=True)}
    outputs = []
    for top in final:
        shape = last_shapes[top]
        dims = ["batch" if dynamic_batch else int(shape[0]), *[int(d) for d in shape[1:]]]
        name = current[top]
        if name != top and top not in g.taken:  # give the output the Caffe blob's name
            name = g.node("Identity", [name], top, f"{top}/output")
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
    graph = helper.make_graph(g.nodes, net.name or "net", inputs, outputs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="squeezecaffe")
    if opset <= 17:
        model.ir_version = 8  # what opset 17 shipped with: readable by runtimes from 2022 on
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    return model, dict(g.ops)


def _input_transform(g: Graph, name: str, t: InputTransform, rank: int) -> str:
    mean = np.asarray(t.mean, np.float32)
    mean = mean.reshape(mean.shape + (1,) * (rank - 1 - mean.ndim)) if mean.ndim < rank - 1 else mean
    x = g.node("Sub", [name, g.const("input/mean", mean)], "input/centered", "input/mean")
    if t.scale != 1.0:
        x = g.node("Mul", [x, g.const("input/scale", np.array(t.scale, np.float32))], "input/scaled", "input/scale")
    return x


def _channel(values: np.ndarray, rank: int, axis: int = 1) -> np.ndarray:
    v = np.asarray(values, np.float32).reshape(-1)
    return v.reshape((-1,) + (1,) * (rank - axis - 1))


def _convolution(g: Graph, lp, bottoms, blobs, info) -> list[str]:
    p = lp.convolution_param
    args = [bottoms[0], g.const(f"{lp.name}/W", blobs[0].astype(np.float32))]
    if p.bias_term and len(blobs) > 1:
        args.append(g.const(f"{lp.name}/b", blobs[1].astype(np.float32).reshape(-1)))
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv_geometry(p)
    return [g.node("Conv", args, lp.top[0], lp.name, kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph, pw],
                   dilations=[dh, dw], group=int(p.group))]


def _relu(g: Graph, lp, bottoms, blobs, info) -> list[str]:
    slope = lp.relu_param.negative_slope
    if slope:
        return [g.node("LeakyRelu", bottoms, lp.top[0], lp.name, alpha=float(slope))]
    return [g.node("Relu", bottoms, lp.top[0], lp.name)]


def _pooling(g: Graph, lp, bottoms, blobs, info) -> list[str]:
    p = lp.pooling_param
    method = {pb.PoolingParameter.MAX: "Max", pb.PoolingParameter.AVE: "Average"}.get(p.pool)
    if method is None:
        raise UserError(f"layer '{lp.name}': STOCHASTIC pooling has no ONNX export")
    if p.global_pooling:
        return [g.node(f"Global{method}Pool", bottoms, lp.top[0], lp.name)]
    _, _, h, w = info.bottom_shapes[0]
    (kh, kw), (sh, sw), (ph, pw) = pool_geometry(p, (h, w))
    oh, ow = pool_out(h, kh, sh, ph), pool_out(w, kw, sw, pw)
    end_h, end_w = (oh - 1) * sh + kh - h - ph, (ow - 1) * sw + kw - w - pw  # end padding that gives oh x ow
    if method == "Average" and (end_h > ph or end_w > pw):
        raise UserError(f"layer '{lp.name}': AVE pooling with windows past the padding divides as ONNX cannot "
                        "express exactly")
    attrs = {"kernel_shape": [kh, kw], "strides": [sh, sw], "pads": [ph, pw, max(end_h, 0), max(end_w, 0)]}
    if method == "Average":
        attrs["count_include_pad"] = 1
    return [g.node(f"{method}Pool", bottoms, lp.top[0], lp.name, **attrs)]


def _concat(g: Graph, lp, bottoms, blobs, info) -> list[str]:
    axis = lp.concat_param.axis if lp.concat_param.HasField("axis") else (lp.concat_param.concat_dim or 1)
    return [g.node("Concat", bottoms, lp.top[0], lp.name, axis=int(axis))]


def _eltwise(g: Graph, lp, bottoms, blobs, info) -> list[str]:
    p = lp.eltwise_param
    if p.operation == pb.EltwiseParameter.PROD:
        return [g.node("Mul", bottoms, lp.top[0], lp.name)]
    if p.operation == pb.EltwiseParameter.MAX:
        return [g.node("Max", bottoms, lp.top[0], lp.name)]
    coeffs = list(p.coeff) or [1.0] * len(bottoms)
    terms = [b if c == 1.0 else g.node("Mul", [b, g.const(f"{lp.name}/coeff", np.array(c, np.float32))],
                                       f"{lp.name}/term", lp.name) for b, c in zip(bottoms, coeffs, strict=True)]
    return [g.node("Sum", terms, lp.top[0], lp.name)]


def _identity(g: Graph, lp, bottoms, blobs, info) -> list[str]:
    return [g.node("Identity", bottoms, lp.top[0], lp.name)]


def _inner_product(g: Graph, lp, bottoms, blobs, info) -> list[str]:
    p = lp.inner_product_param
    axis = p.axis if p.HasField("axis") else 1
    x = bottoms[0]
    if len(info.bottom_shapes[0]) != 2 or axis != 1:
        x = g.node("Flatten", [x], f"{lp.name}/flat", lp.name, axis=int(axis))
    args = [x, g.const(f"{lp.name}/W", blobs[0].astype(np.float32).reshape(int(p.num_output), -1)
                       if not p.transpose else blobs[0].astype(np.float32).reshape(-1, int(p.num_output)))]
    if p.bias_term and len(blobs) > 1:
        args.append(g.const(f"{lp.name}/b", blobs[1].astype(np.float32).reshape(-1)))
    return [g.node("Gemm", args, lp.top[0], lp.name, transB=0 if p.transpose else 1)]


def _softmax(g: Graph, lp, bottoms, blobs, info) -> list[str]:
    axis = lp.softmax_param.axis if lp.softmax_param.HasField("axis") else 1
    return [g.node("Softmax", bottoms, lp.top[0], lp.name, axis=int(axis))]


def _batchnorm(g: Graph, lp, bottoms, blobs, info) -> list[str]:
    mean, var = batchnorm_stats(blobs)
    c = mean.size
    args = [bottoms[0], g.const(f"{lp.name}/gamma", np.ones(c, np.float32)),
            g.const(f"{lp.name}/beta", np.zeros(c, np.float32)), g.const(f"{lp.name}/mean", mean.astype(np.float32)),
            g.const(f"{lp.name}/var", var.astype(np.float32))]
    return [g.node("BatchNormalization", args, lp.top[0], lp.name, epsilon=float(lp.batch_norm_param.eps))]


def _scale(g: Graph, lp, bottoms, blobs, info) -> list[str]:
    p = lp.scale_param
    if len(lp.bottom) != 1 or p.axis != 1 or p.num_axes != 1:
        raise UserError(f"layer '{lp.name}': only per-channel Scale (one bottom, axis 1) has an ONNX export")
    rank = len(info.bottom_shapes[0])
    x = g.node("Mul", [bottoms[0], g.const(f"{lp.name}/gamma", _channel(blobs[0], rank))], lp.top[0], lp.name)
    if p.bias_term:
        x = g.node("Add", [x, g.const(f"{lp.name}/beta", _channel(blobs[1], rank))], lp.top[0], lp.name)
    return [x]


def _power(g: Graph, lp, bottoms, blobs, info) -> list[str]:
    """(shift + scale * x) ^ power, each step only where Caffe's defaults do not make it an identity."""
    p = lp.power_param
    steps = [("Mul", p.scale, 1.0, "scale"), ("Add", p.shift, 0.0, "shift"), ("Pow", p.power, 1.0, "power")]
    x = bottoms[0]
    for op, value, identity, what in steps:
        if value != identity:
            x = g.node(op, [x, g.const(f"{lp.name}/{what}", np.array(value, np.float32))], lp.top[0], lp.name)
    return [x if x != bottoms[0] else g.node("Identity", [x], lp.top[0], lp.name)]


def _slice(g: Graph, lp, bottoms, blobs, info) -> list[str]:
    p = lp.slice_param
    shape = info.bottom_shapes[0]
    axis = p.slice_dim if p.HasField("slice_dim") else p.axis
    axis = axis % len(shape)
    from onnx import helper

    sizes = [top[axis] for top in info.top_shapes]
    outs = [g.fresh(top) for top in lp.top]
    g.nodes.append(helper.make_node("Split", [bottoms[0], g.const(f"{lp.name}/split", np.array(sizes, np.int64))],
                                    outs, name=g.fresh(f"{lp.name}#Split"), axis=int(axis)))
    g.ops["Split"] = g.ops.get("Split", 0) + 1
    return outs


_EMITTERS: dict[str, Callable] = {"Convolution": _convolution, "ReLU": _relu, "Pooling": _pooling,
                                  "Concat": _concat, "Eltwise": _eltwise, "Dropout": _identity,
                                  "InnerProduct": _inner_product, "Softmax": _softmax, "BatchNorm": _batchnorm,
                                  "Scale": _scale, "Power": _power, "Slice": _slice}
