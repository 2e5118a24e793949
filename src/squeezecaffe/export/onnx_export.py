"""`squeezecaffe export`: a trained model -> an ONNX file, checked and run in onnxruntime before it is written.

The file is written only when `onnx.checker` accepts the graph and onnxruntime's output for a batch of inputs
(real images from the data directory when there is one, else seeded random ones) is within `tolerance` of our
engine's, both as probabilities; otherwise the verb stops with one line and nothing is written. The model's
metadata carries what `eval`/`classify` need to use the file on its own: class names, the deploy prototxt, the
TEST transform still to apply (none of mean/scale when they are baked in), the stored image size and the data
directory, plus the exporter's settings and the ops used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from squeezecaffe import __version__
from squeezecaffe.errors import UserError
from squeezecaffe.evaluation.artifacts import Artifacts, Carried, carried_from, resolve_artifacts
from squeezecaffe.export.onnx_graph import DEFAULT_OPSET, InputTransform, build_onnx, fold_batchnorm
from squeezecaffe.fileio import first_line
from squeezecaffe.proto import pb, to_text

TOLERANCE = 1e-4  # max |p_onnxruntime - p_ours| over the check batch
CHECK_IMAGES = 16


@dataclass
class ExportOptions:
    opset: int = DEFAULT_OPSET
    dynamic_batch: bool = False
    fold_batchnorm: bool = False
    bake_transform: bool = False
    tolerance: float = TOLERANCE
    check_images: int = CHECK_IMAGES
    data: str | None = None
    seed: int = 0


@dataclass
class ExportReport:
    path: Path
    bytes: int
    ops: dict[str, int]
    folded: int
    max_difference: float  # of the probabilities
    logits_difference: float  # max |logits difference| / max(|our logits|, 1)
    checked_on: str  # what the check batch was


def _weights(path: Path) -> dict[str, list[np.ndarray]]:
    from squeezecaffe.caffe_rules.blobs import blob_shape, blob_values, read_caffemodel

    return {lp.name: [blob_values(b).astype(np.float32).reshape(blob_shape(b)) for b in lp.blobs]
            for lp in read_caffemodel(path).layer if len(lp.blobs)}


def baked_transform(art: Artifacts) -> tuple[InputTransform, pb.TransformationParameter]:
    """The mean/scale as graph nodes, and the transform left for the caller (the crop only)."""
    from squeezecaffe.data_tools.transform import read_mean_file

    t = art.transform
    channels, height, width = art.input_shape
    if t.HasField("mean_file"):
        mean = read_mean_file(t.mean_file)
        if mean.shape[1:] != (height, width):
            h0, w0 = (mean.shape[1] - height) // 2, (mean.shape[2] - width) // 2
            if h0 < 0 or w0 < 0:
                raise UserError(f"{t.mean_file}: mean image {mean.shape[1]}x{mean.shape[2]} is smaller than the "
                                f"input {height}x{width}")
            mean = mean[:, h0:h0 + height, w0:w0 + width]  # Caffe's TEST crop takes the centre of the mean too
    elif len(t.mean_value):
        values = list(t.mean_value)
        mean = np.asarray(values if len(values) == channels else values[:1] * channels, np.float32)
    else:
        mean = np.zeros(channels, np.float32)
    return InputTransform(mean, float(t.scale) if t.HasField("scale") else 1.0), _crop_only(t)


def _check_images(art: Artifacts, options: ExportOptions, pre) -> tuple[list[np.ndarray], str]:
    """uint8 images at their stored size: the first records of the data (test split, else val) when there is a
    data directory, else seeded random pixels."""
    if art.data_dir is not None or options.data:
        from squeezecaffe.evaluation.evaluate import open_source

        try:
            source = open_source(art, options.data, None, pre)
        except UserError:
            if options.data:  # the user's own --data must be right; a run's missing data only means random inputs
                raise
            source = None
        if source is not None and len(source):
            n = min(options.check_images, len(source))
            return [source.item(i)[0] for i in range(n)], f"{n} images of {source.where}"
    rng = np.random.default_rng(options.seed)
    shape = (art.input_shape[0], *pre.file_size)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(options.check_images)], \
        f"{options.check_images} seeded random images"


def _check_batch(art: Artifacts, options: ExportOptions, baked: InputTransform | None) -> tuple[np.ndarray,
                                                                                             np.ndarray, str]:
    """(input for our engine, input for the graph, what they are): the same images through the TEST transform,
    and for a graph with the transform baked in, through the crop alone."""
    from squeezecaffe.evaluation.preprocess import Preprocessor

    pre = Preprocessor(art)
    images, described = _check_images(art, options, pre)
    ours = np.stack([pre.from_stored(img) for img in images])
    if baked is None:
        return ours, ours, described
    crop_only = Preprocessor(replace(art, transform=_crop_only(art.transform)))
    return ours, np.stack([crop_only.from_stored(img) for img in images]), described


def _crop_only(t: pb.TransformationParameter) -> pb.TransformationParameter:
    rest = pb.TransformationParameter()
    if t.crop_size:
        rest.crop_size = t.crop_size
    return rest


def export_onnx(weights: str, output: str | Path, options: ExportOptions, *, net: str | None = None,
                model: str | None = None) -> ExportReport:
    import onnx

    from squeezecaffe.evaluation.runtimes import ONNX_LOGITS_KEY, TorchRuntime, logits_layer
    from squeezecaffe.fileio import atomic_write_bytes, ensure_writable_dir
    from squeezecaffe.scoring import softmax

    output = Path(output)
    ensure_writable_dir(output.parent, "cannot write the .onnx there")
    carried = None
    if weights.endswith(".sqz"):
        from squeezecaffe.compress.sqz import open_sqz

        weights, carried = open_sqz(weights)
    art = resolve_artifacts(weights, net=net, model=model, data=options.data, out_dir=output.parent, carried=carried)
    deploy, blobs = art.deploy, _weights(art.weights)
    folded = 0
    if options.fold_batchnorm:
        deploy, blobs, folded = fold_batchnorm(deploy, blobs)
    baked, rest = (baked_transform(art) if options.bake_transform else (None, art.transform))
    logits_blob, _ = logits_layer(art)
    ends_in_softmax = any(lp.type == "Softmax" for lp in art.deploy.layer)
    metadata = {
        "squeezecaffe.version": __version__, "squeezecaffe.source": str(art.weights),
        "squeezecaffe.classes": json.dumps([[c.id, c.name] for c in art.labels]),
        "squeezecaffe.evaluation": to_text(art.deploy), "squeezecaffe.transform": to_text(rest),
        "squeezecaffe.baked_transform": json.dumps(options.bake_transform),
        "squeezecaffe.stored_size": json.dumps(list(art.stored_size) if art.stored_size else None),
        "squeezecaffe.data": str(art.data_dir.resolve()) if art.data_dir else "",
        "squeezecaffe.folded_batchnorm": str(folded),
    }
    onnx_model, ops = build_onnx(deploy, blobs, opset=options.opset, dynamic_batch=options.dynamic_batch,
                                 transform=baked, metadata=metadata, extra_outputs=[logits_blob] if ends_in_softmax
                                 else [])
    outputs = [o.name for o in onnx_model.graph.output]
    onnx_model.metadata_props.add(key=ONNX_LOGITS_KEY, value=outputs[-1] if ends_in_softmax else outputs[0])
    onnx_model.metadata_props.add(key="squeezecaffe.ops", value=json.dumps(ops))
    try:
        onnx.checker.check_model(onnx_model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise UserError(f"{output}: the exported graph fails onnx.checker ({first_line(exc)}); "
                        "not written") from None
    data_bytes = onnx_model.SerializeToString()
    ours_in, graph_in, checked_on = _check_batch(art, options, baked)
    ours_logits = TorchRuntime(art).logits(ours_in).astype(np.float64)
    logits_name = outputs[-1] if ends_in_softmax else outputs[0]
    theirs_logits = run_onnx(data_bytes, graph_in, logits_name).reshape(ours_logits.shape).astype(np.float64)
    ours = softmax(ours_logits)
    theirs = run_onnx(data_bytes, graph_in, outputs[0]).reshape(ours.shape) if ends_in_softmax else softmax(
        theirs_logits)
    diff = float(np.abs(theirs - ours).max())
    # probabilities saturate (0 or 1) on confident inputs and then hide any error: the logits are held to the same
    # bound relative to their scale
    scale = max(float(np.abs(ours_logits).max()), 1.0)
    logits_diff = float(np.abs(theirs_logits - ours_logits).max()) / scale
    if not diff <= options.tolerance:
        raise UserError(f"{output}: onnxruntime's probabilities differ from our engine's by {diff:.2e} "
                        f"(> {options.tolerance:g}) on {checked_on}; not written")
    if not logits_diff <= options.tolerance:
        raise UserError(f"{output}: onnxruntime's logits differ from our engine's by {logits_diff:.2e} of their "
                        f"scale (> {options.tolerance:g}) on {checked_on}; not written")
    atomic_write_bytes(output, data_bytes)
    return ExportReport(output, len(data_bytes), ops, folded, diff, logits_diff, checked_on)


def run_onnx(model: bytes | str, batch: np.ndarray, output: str) -> np.ndarray:
    """One output of an ONNX model in onnxruntime (CPU), the batch split as the graph's batch size needs."""
    from squeezecaffe.evaluation.runtimes import OnnxBatches, onnx_session

    return OnnxBatches(onnx_session(model), output)(batch)


def read_onnx_metadata(path: str) -> dict[str, str]:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(path, load_external_data=False)
    except (DecodeError, OSError, ValueError) as exc:  # damaged bytes, an unreadable path
        raise UserError(f"{path}: not a readable ONNX file ({first_line(exc)})") from None
    return {p.key: p.value for p in model.metadata_props}


def open_onnx(path: str) -> Carried:
    """What an exported file carries, for `eval`/`classify` on it: deploy net, transform still to apply, data."""
    meta = read_onnx_metadata(path)
    try:
        labels = json.loads(meta.get("squeezecaffe.classes") or "null")
        stored_size = json.loads(meta.get("squeezecaffe.stored_size") or "null")
    except json.JSONDecodeError:
        raise UserError(f"{path}: its squeezecaffe metadata is not valid JSON") from None
    return carried_from(meta.get("squeezecaffe.evaluation"), meta.get("squeezecaffe.transform"),
                        meta.get("squeezecaffe.data") or None, Path(path).stem, path, labels, stored_size)
