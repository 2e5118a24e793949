"""The settings of `eval` and `classify`, declared once: the verbs' options are built from these fields and the
library functions take their defaults from `EVAL_DEFAULTS`, so a default is written in one place."""

from __future__ import annotations

from dataclasses import dataclass

from squeezecaffe.data_tools.convert import ConvertOptions
from squeezecaffe.evaluation.runtimes import RUNTIMES
from squeezecaffe.options import option


@dataclass(frozen=True)
class EvalOptions:
    net: str | None = option(None, "deploy.prototxt the weights belong to (default: the run's)")
    model: str | None = option(None, "registered model whose deploy net the weights belong to")
    engine: str = option("torch", f"the runtime: {', '.join(RUNTIMES)} (opencv: OpenCV dnn; onnxruntime: an .onnx)")
    mean_value: str | None = option(None, "B,G,R mean to subtract when neither a run nor --data says it")
    batch_size: int = option(100, "images per forward pass")
    errors: int = option(32, "wrong predictions shown in errors.png")
    # an image folder's unreadable share: build-lmdb's rule and default
    max_skip: float = option(ConvertOptions.max_skip, "share of an image folder that may be unreadable (skipped, "
                                                      "listed in metrics.json) before the command fails, as build-lmdb")
    top: int = option(5, "labels printed per image")


EVAL_DEFAULTS = EvalOptions()
