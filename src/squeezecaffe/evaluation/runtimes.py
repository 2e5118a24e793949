"""Runtimes that execute a deploy net and return its logits: our torch engine, OpenCV's dnn and real Caffe.

OpenCV 4.x reads Caffe prototxt/caffemodel with its own, independent implementation of every layer,
so agreement between the two is evidence about both. Logits are the bottom of the net's final Softmax
(scores before normalisation), so loss and probabilities are computed identically for every runtime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from squeezecaffe.errors import UserError
from squeezecaffe.evaluation.artifacts import Artifacts
from squeezecaffe.fileio import first_line

RUNTIMES = ("torch", "opencv", "caffe", "onnxruntime")
ONNX_LOGITS_KEY = "squeezecaffe.logits"  # metadata of an exported .onnx: the graph output holding the logits


def logits_layer(art: Artifacts) -> tuple[str, str]:
    """(blob, layer that last writes it) of the scores the net's final Softmax reads."""
    layers = list(art.deploy.layer)
    blob = None
    for lp in reversed(layers):
        if lp.type == "Softmax":
            blob = lp.bottom[0]
            break
    if blob is None:  # a deploy net that ends at the scores
        blob = layers[-1].top[0]
    writer = next(lp.name for lp in reversed(layers) if blob in lp.top and lp.type != "Softmax")
    return blob, writer


class TorchRuntime:
    name = "torch"

    def __init__(self, art: Artifacts, device: str = "cpu") -> None:
        from squeezecaffe.engines.torchcaffe.net import CaffeNet
        from squeezecaffe.engines.torchcaffe.options import EngineOptions
        from squeezecaffe.engines.torchcaffe.weights import load_caffemodel

        self.net = CaffeNet(art.deploy, "TEST", where=str(art.deploy_path))
        report = load_caffemodel(self.net, art.weights)
        if report.missing:
            raise UserError(f"{art.weights}: holds no weights for layer(s) {', '.join(report.missing)} of "
                            f"{art.deploy_path}; is it the right net?")
        # NHWC: 1.6x the images/s of NCHW on this project's CPU (the demo's test eval: 337 -> 546), the logits equal
        # to float rounding (docs/evaluation.md); convolutions on GPUs prefer it too
        EngineOptions(device=device, channels_last=True).apply(self.net)
        self.net.eval()
        self.input = next(iter(self.net.input_shapes))
        self.blob, _ = logits_layer(art)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.net({self.input: torch.from_numpy(batch)}).blobs[self.blob]
        return out.float().cpu().numpy().reshape(len(batch), -1)


class OpenCVRuntime:
    name = "opencv"

    def __init__(self, art: Artifacts, device: str = "cpu") -> None:
        import cv2

        if device != "cpu":
            raise UserError(f"--engine opencv runs on the CPU only (got --device {device})")
        try:
            self.net = cv2.dnn.readNetFromCaffe(str(art.deploy_path), str(art.weights))
        except cv2.error as exc:
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
            raise UserError(f"{art.deploy_path}: OpenCV dnn cannot load it with {art.weights} ({first})") from None
        _, self.layer = logits_layer(art)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        self.net.setInput(np.ascontiguousarray(batch, np.float32))
        return np.asarray(self.net.forward(self.layer), np.float32).reshape(len(batch), -1)


class CaffeRuntime:
    """Real Caffe (our `make caffe` build) running the deploy net; its glog output goes to a temporary file."""

    name = "caffe"

    def __init__(self, art: Artifacts, device: str = "cpu") -> None:
        import os
        import tempfile
        import weakref

        from squeezecaffe.engines.pycaffe.runtime import CAFFE_ERRORS, GlogTap, import_caffe, last_error, select_device

        caffe = import_caffe(cuda=device.startswith("cuda"))
        select_device(caffe, device)
        fd, name = tempfile.mkstemp(prefix="squeezecaffe-caffe-", suffix=".log")  # Caffe's chatter, then removed
        os.close(fd)
        self._log = Path(name)
        weakref.finalize(self, self._log.unlink, missing_ok=True)
        self._tap = lambda: GlogTap(self._log)
        error = None
        with self._tap() as tap:
            try:
                self.net = caffe.Net(str(art.deploy_path), str(art.weights), caffe.TEST)
            except CAFFE_ERRORS as exc:
                error = exc
        if error is not None:
            raise UserError(f"{art.deploy_path}: Caffe cannot load it with {art.weights} "
                            f"({last_error(tap.text) or error})")
        self.input = self.net.inputs[0]
        self.blob, _ = logits_layer(art)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        blob = self.net.blobs[self.input]
        if tuple(blob.data.shape) != batch.shape:
            blob.reshape(*batch.shape)
            self.net.reshape()
        blob.data[...] = batch
        with self._tap():
            self.net.forward()
        return np.array(self.net.blobs[self.blob].data, np.float32).reshape(len(batch), -1)


def onnxruntime_errors() -> tuple[type[Exception], ...]:
    """onnxruntime's own exception types (Fail, InvalidGraph, InvalidProtobuf, NoSuchFile, ...), which derive from
    Exception directly; a bad path or file also raises OSError/ValueError/RuntimeError on some versions."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    own = tuple(v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception))
    return (*own, OSError, ValueError, RuntimeError)


def onnx_session(model: bytes | str, device: str = "cpu"):
    """An onnxruntime session (CPU; CUDA first when asked and available), its errors as one line."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("onnxruntime is not installed: pip install 'squeezecaffe[onnx]'") from None
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UserError(f"--device {device}: this onnxruntime has no CUDA provider (pip install onnxruntime-gpu)")
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model, options, providers=providers)
    except onnxruntime_errors() as exc:
        where = model if isinstance(model, str) else "the exported graph"
        raise UserError(f"{where}: onnxruntime cannot load it ({first_line(exc)})") from None


class OnnxBatches:
    """Runs a session on a batch of any size: whole when the graph's batch is dynamic, else in chunks of it."""

    def __init__(self, session, output: str) -> None:
        self.session = session
        self.input = session.get_inputs()[0]
        self.output = output
        dim = self.input.shape[0]
        self.fixed = dim if isinstance(dim, int) and dim > 0 else None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, np.float32)
        if self.fixed is None or len(batch) == self.fixed:
            return self.session.run([self.output], {self.input.name: batch})[0]
        parts = []
        for start in range(0, len(batch), self.fixed):
            chunk = batch[start:start + self.fixed]
            pad = self.fixed - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
            parts.append(self.session.run([self.output], {self.input.name: chunk})[0][: self.fixed - pad])
        return np.concatenate(parts)


class OnnxRuntime:
    """An exported .onnx (squeezecaffe export) in onnxruntime; scores from the output its metadata names."""

    name = "onnxruntime"

    def __init__(self, art: Artifacts, device: str = "cpu") -> None:
        if art.weights.suffix != ".onnx":
            raise UserError(f"--engine onnxruntime runs an exported .onnx file (squeezecaffe export ... --onnx "
                            f"X.onnx), not {art.weights}")
        session = onnx_session(str(art.weights), device)
        meta = session.get_modelmeta().custom_metadata_map
        output = meta.get(ONNX_LOGITS_KEY) or session.get_outputs()[0].name
        self.run = OnnxBatches(session, output)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.run(batch), np.float32).reshape(len(batch), -1)


def make_runtime(name: str, art: Artifacts, device: str = "cpu"):
    if name == "torch":
        return TorchRuntime(art, device)
    if name == "opencv":
        return OpenCVRuntime(art, device)
    if name == "caffe":
        return CaffeRuntime(art, device)
    if name == "onnxruntime":
        return OnnxRuntime(art, device)
    raise UserError(f"--engine {name}: choose one of {', '.join(RUNTIMES)}")



