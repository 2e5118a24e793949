"""What every Caffe layer of the torch engine shares: the layer context, the base module with its blobs in Caffe's
order and layout, and the registry of layer types (filled by layers.py and losses.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from squeezecaffe.caffe_rules.shapes import LayerInfo
from squeezecaffe.errors import UserError
from squeezecaffe.proto import pb

FLT_MIN = 1.17549435e-38  # Caffe clamps probabilities to this before the log


@dataclass
class LayerContext:
    """What a layer needs to know about the net it lives in."""

    phase: int  # pb.TRAIN or pb.TEST
    where: str  # the prototxt, for messages
    rng_seed: int = 0  # mixed with the step key for Dropout masks
    step_key: int = 0  # set by the net before each forward (the solver sets it from iter and pass)


class CaffeLayer(nn.Module):
    """Base: a layer's parameter blobs (Caffe order) and its forward over bottoms -> tops."""

    def __init__(self, lp: pb.LayerParameter, info: LayerInfo, ctx: LayerContext) -> None:
        super().__init__()
        self.lp = lp
        self.info = info
        self.ctx = ctx
        self.blobs = nn.ParameterList(
            nn.Parameter(torch.zeros(p.shape), requires_grad=p.trainable) for p in info.params
        )

    def fail(self, msg: str) -> UserError:
        return UserError(f"{self.ctx.where}: layer '{self.lp.name}' ({self.lp.type}): {msg}")

    def forward(self, bottoms: list[Tensor]) -> list[Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


LAYERS: dict[str, type[CaffeLayer]] = {}


def register(*types: str) -> Callable[[type[CaffeLayer]], type[CaffeLayer]]:
    def deco(cls: type[CaffeLayer]) -> type[CaffeLayer]:
        for t in types:
            LAYERS[t] = cls
        return cls

    return deco


def wide(t: Tensor) -> Tensor:
    """Half-precision tensors (autocast) widened to fp32 for softmax and losses; fp32/fp64 kept."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
