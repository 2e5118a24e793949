"""A NetParameter compiled into a PyTorch module that runs its layers in prototxt order.

Blobs are looked up by name. An in-place layer (top == bottom) rebinds the name to its output,
which is what Caffe's in-place computation amounts to; a blob read by several layers simply feeds
them all and autograd sums their gradients, which is what Caffe's implicit Split layers do. The
objective is sum(loss_weight * top) over every top with a loss weight (1 for a *Loss layer's first
top unless the prototxt says otherwise), as in Caffe.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from squeezecaffe.caffe_rules.shapes import infer_layers, net_input_shapes
from squeezecaffe.caffe_rules.state import filter_net, make_state
from squeezecaffe.engines.torchcaffe.layer_base import LAYERS, LayerContext
from squeezecaffe.engines.torchcaffe.layers import SUPPORTED_TYPES, DataLayer
from squeezecaffe.engines.torchcaffe.loader import DataLayerLoader
from squeezecaffe.engines.torchcaffe.options import EngineOptions
from squeezecaffe.engines.torchcaffe.rewrites import allow_in_place_relu, fuse_batchnorm_scale
from squeezecaffe.errors import UserError
from squeezecaffe.proto import pb


@dataclass
class DataOptions:
    """How Data layers feed batches (seed for the crop/mirror draws, worker processes, prefetch)."""

    seed: int = 0
    workers: int = 0
    pin_memory: bool = False
    prefetch: int = 4
    rank: int = 0  # data-parallel training: this process takes the records at positions = rank (mod world)
    world: int = 1
    device_transform: str | None = None  # transform uint8 batches on this device (see device_transform.py)
    in_memory: bool = False  # the whole database decoded once into a tensor on that device (loader.py)

    @classmethod
    def for_engine(cls, options: EngineOptions, seed: int, rank: int = 0, world: int = 1) -> DataOptions:
        """The Data layers' settings the engine options imply: one rule for train, test and validation nets."""
        return cls(seed=seed, workers=options.workers, pin_memory=options.torch_device().type == "cuda",
                   prefetch=options.prefetch, rank=rank, world=world,
                   device_transform=options.data_transform_device(), in_memory=options.data_in_memory)


def default_loss_weights(lp: pb.LayerParameter) -> list[float]:
    if len(lp.loss_weight):
        return list(lp.loss_weight)
    if lp.type.endswith("Loss"):
        return [1.0] + [0.0] * (len(lp.top) - 1)
    return [0.0] * len(lp.top)


@dataclass
class ForwardResult:
    blobs: dict[str, Tensor]  # every blob by name (an in-place blob holds its final value)
    loss: Tensor  # the weighted objective


class CaffeNet(nn.Module):
    """One phase of a prototxt as a module. `layers[i]` runs `filtered.layer[i]`."""

    def __init__(self, param: pb.NetParameter, phase: str | int = "TEST", *, stages: tuple[str, ...] = (),
                 level: int = 0, where: str = "net", base_dir: Path | None = None,
                 data: DataOptions | None = None, input_shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
        super().__init__()
        self.param = param
        self.where = where
        self.state = make_state(phase, level, stages)
        self.filtered = filter_net(param, self.state)
        self._check_supported()
        self.ctx = ctx = LayerContext(phase=self.state.phase, where=where, rng_seed=(data or DataOptions()).seed)
        self.loaders: dict[str, DataLayerLoader] = {}
        data_shapes = {}
        for lp in self.filtered.layer:
            if lp.type == "Data":
                opts = data or DataOptions()
                loader = DataLayerLoader(lp, self.state.phase, opts.seed, opts.workers, opts.pin_memory,
                                         opts.prefetch, base_dir, where, rank=opts.rank, world=opts.world,
                                         device_transform=opts.device_transform, in_memory=opts.in_memory)
                self.loaders[lp.name] = loader
                data_shapes[lp.name] = (1, *loader.shape[1:])
        filtered = self._with_input_shapes(input_shapes) if input_shapes else self.filtered
        infos = infer_layers(filtered, where=where, data_shapes=data_shapes)
        # every top's shape as inferred (batch dimension from the Data layer or Input); an in-place top: the last
        self.top_shapes = {top: tuple(shape) for info, lp in zip(infos, self.filtered.layer, strict=True)
                           for top, shape in zip(lp.top, info.top_shapes, strict=False)}
        self.layer_names = [lp.name for lp in self.filtered.layer]
        modules = []
        for lp, info in zip(self.filtered.layer, infos, strict=True):
            module = LAYERS[lp.type](lp, info, ctx)
            if isinstance(module, DataLayer):
                module.loader = self.loaders[lp.name]
            modules.append(module)
        self.layers = nn.ModuleList(modules)
        fuse_batchnorm_scale(list(self.filtered.layer), modules)
        allow_in_place_relu(list(self.filtered.layer), modules)
        # the shapes shape inference gave the Input tops (and the legacy `input:` fields)
        self.input_shapes = dict(net_input_shapes(filtered))
        for lp, info in zip(self.filtered.layer, infos, strict=True):
            if lp.type == "Input":
                self.input_shapes.update(zip(lp.top, info.top_shapes, strict=False))
        self.loss_weights = [default_loss_weights(lp) for lp in self.filtered.layer]
        self.output_blobs = self._outputs()
        self.channels_last = False
        self.autocast_dtype: torch.dtype | None = None

    # ------------------------------------------------------------------ construction helpers
    def _check_supported(self) -> None:
        names: dict[str, str] = {}
        for lp in self.filtered.layer:
            if lp.type not in LAYERS:
                raise UserError(f"{self.where}: layer '{lp.name}' has type '{lp.type}', which the torch engine does not "
                                f"support (supported: {', '.join(SUPPORTED_TYPES)})")
            for spec in lp.param:
                if spec.name:
                    if spec.name in names:
                        raise UserError(f"{self.where}: layer '{lp.name}' shares parameter '{spec.name}' with layer "
                                        f"'{names[spec.name]}'; shared parameters are not supported by the torch engine")
                    names[spec.name] = lp.name

    def _with_input_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> pb.NetParameter:
        """A copy whose Input layers declare the given shapes (e.g. another batch size)."""
        net = pb.NetParameter()
        net.CopyFrom(self.filtered)
        for lp in net.layer:
            if lp.type == "Input":
                dims = [shapes.get(t) for t in lp.top]
                if any(d is not None for d in dims):
                    old = list(lp.input_param.shape)
                    del lp.input_param.shape[:]
                    for i in range(len(lp.top)):
                        d = dims[i] or tuple(old[min(i, len(old) - 1)].dim)
                        lp.input_param.shape.add().dim.extend(int(v) for v in d)
        return net

    @property
    def step_key(self) -> int:
        """Advanced per forward; seeds Dropout masks (the solver sets it from iteration and pass)."""
        return self.ctx.step_key

    @step_key.setter
    def step_key(self, value: int) -> None:
        self.ctx.step_key = value

    def _outputs(self) -> list[str]:
        """Blobs no later layer reads: Caffe's net outputs (losses, accuracies, probabilities)."""
        produced: dict[str, int] = {}
        for i, lp in enumerate(self.filtered.layer):
            for b in lp.bottom:
                produced.pop(b, None)
            for t in lp.top:
                produced[t] = i
        return list(produced)

    # ------------------------------------------------------------------ parameters
    def learnable(self) -> list[tuple[str, int, nn.Parameter, float, float]]:
        """(layer, blob index, blob, lr_mult, decay_mult) for every blob, in Caffe's learnable order.

        BatchNorm's statistics are in the list like any blob and follow their ParamSpec, as the
        reference Caffe build does: their backward diff is zero, but without `param { lr_mult: 0 }`
        weight decay still moves them through the solver (netgen always emits lr_mult 0, decay_mult 0).
        """
        out = []
        for name, module in zip(self.layer_names, self.layers, strict=True):
            specs = list(module.lp.param)
            for i, blob in enumerate(module.blobs):
                spec = specs[i] if i < len(specs) else pb.ParamSpec()
                out.append((name, i, blob, spec.lr_mult, spec.decay_mult))
        return out

    def share_weights_from(self, other: CaffeNet) -> None:
        """Use `other`'s blob tensors for same-named layers (the TEST net of a solver sees TRAIN's weights)."""
        theirs = dict(zip(other.layer_names, other.layers, strict=True))
        for name, module in zip(self.layer_names, self.layers, strict=True):
            source = theirs.get(name)
            if source is None or not len(module.blobs):
                continue
            for i, blob in enumerate(module.blobs):
                if i >= len(source.blobs) or source.blobs[i].shape != blob.shape:
                    got = "missing" if i >= len(source.blobs) else "x".join(map(str, source.blobs[i].shape))
                    raise UserError(f"{self.where}: layer '{name}' blob {i} is {'x'.join(map(str, blob.shape))} here "
                                    f"and {got} in the net it shares weights with")
                module.blobs[i] = source.blobs[i]

    @property
    def device(self) -> torch.device:
        for module in self.layers:
            for blob in module.blobs:
                return blob.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for module in self.layers:
            for blob in module.blobs:
                return blob.dtype
        return torch.float32

    def close(self) -> None:
        """Stop the Data layers' readers (worker processes, in-memory databases); the net cannot read data after."""
        for loader in self.loaders.values():
            loader.close()

    def batch_size(self) -> int:
        for loader in self.loaders.values():
            return loader.batch_size
        for shape in self.input_shapes.values():
            return shape[0]
        return 1

    # ------------------------------------------------------------------ running
    def _prepare(self, t: Tensor) -> Tensor:
        t = t.to(self.device, self.dtype if t.is_floating_point() else None, non_blocking=True)
        if self.channels_last and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    def forward(self, inputs: Mapping[str, Tensor] | None = None) -> ForwardResult:  # type: ignore[override]
        inputs = dict(inputs or {})
        blobs: dict[str, Tensor] = {}
        for name in self.filtered.input:
            if name not in inputs:
                raise UserError(f"{self.where}: input blob '{name}' was not given")
            blobs[name] = self._prepare(torch.as_tensor(inputs[name]))
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype)
                    if self.autocast_dtype is not None else contextlib.nullcontext())
        with autocast:
            for lp, module in zip(self.filtered.layer, self.layers, strict=True):
                if lp.type == "Input":
                    tops = []
                    for top in lp.top:
                        if top not in inputs:
                            raise UserError(f"{self.where}: input blob '{top}' was not given")
                        tops.append(self._prepare(torch.as_tensor(inputs[top])))
                elif lp.type == "Data":
                    tops = [self._prepare(t) for t in module.loader.next_batch()][: len(lp.top)]
                else:
                    try:
                        bottoms = [blobs[b] for b in lp.bottom]
                    except KeyError as exc:
                        raise UserError(f"{self.where}: layer '{lp.name}': bottom blob {exc.args[0]!r} "
                                        "does not exist") from None
                    tops = module(bottoms)
                for name, t in zip(lp.top, tops, strict=True):
                    blobs[name] = t
        self.step_key += 1
        loss = torch.zeros((), device=self.device, dtype=torch.float64 if self.dtype == torch.float64 else torch.float32)
        for lp, weights in zip(self.filtered.layer, self.loss_weights, strict=True):
            for top, w in zip(lp.top, weights, strict=False):
                if w:
                    loss = loss + w * blobs[top].to(loss.dtype).sum()
        return ForwardResult(blobs, loss)

    def data_positions(self) -> dict[str, int]:
        return {name: loader.position for name, loader in self.loaders.items()}

    def seek_data(self, position: int) -> None:
        for loader in self.loaders.values():
            loader.seek(position)


def load_net(path: str | Path, phase: str | int = "TEST", **kwargs) -> CaffeNet:
    """Compile a prototxt file; relative data sources resolve as Caffe does, else beside the file."""
    from squeezecaffe.proto import read_text

    path = Path(path)
    return CaffeNet(read_text(path, pb.NetParameter), phase, where=str(path), base_dir=path.parent, **kwargs)
