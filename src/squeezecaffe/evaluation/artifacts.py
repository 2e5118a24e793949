"""What a trained model is made of, found from what the user points at.

`eval` and `classify` take WEIGHTS as a run directory (its deploy.prototxt, best.caffemodel, TEST
transform and data directory are all known), a .caffemodel inside a run's snapshots/ (same), or any
.caffemodel with `--net deploy.prototxt` or `--model NAME`. Preprocessing must be the one the net was
trained with: the TEST Data layer's transform_param of the run's train_val.prototxt, else the data
directory's per-channel mean, else `--mean-value`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from squeezecaffe.data_tools.layouts import ClassLabel, numbered_labels, read_labels
from squeezecaffe.data_tools.manifest import DataManifest, read_manifest
from squeezecaffe.errors import UserError
from squeezecaffe.proto import pb, read_text, write_text
from squeezecaffe.train import rundir


@dataclass
class Artifacts:
    deploy: pb.NetParameter
    deploy_path: Path  # on disk (OpenCV reads a file); a generated deploy is written beside the outputs
    weights: Path
    transform: pb.TransformationParameter  # TEST transform: mean, scale, crop; never mirrored
    input_shape: tuple[int, int, int]  # C, H, W the net takes
    stored_size: tuple[int, int] | None  # H, W images were stored at for training (resize before cropping)
    labels: list[ClassLabel]
    run_dir: Path | None = None
    data_dir: Path | None = None
    manifest: DataManifest | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> int:
        return len(self.labels)


@dataclass
class Carried:
    """What a packed model file (a .sqz from compress, an .onnx from export) says about its model; used for
    whatever the user does not name (--net/--model, --data)."""

    deploy: Path | None
    transform: pb.TransformationParameter | None
    data: str | None  # the data directory it was trained on, when that still exists here
    # class ids and names, and the size training images were stored at: the file stays usable on a machine
    # (or with a --data folder) that has no such data directory
    labels: list[ClassLabel] | None = None
    stored_size: tuple[int, int] | None = None


def carried_from(deploy_text: str | None, transform_text: str | None, data: str | None, stem: str,
                 where: str, labels: list | None = None, stored_size: list | None = None) -> Carried:
    """A Carried from a file's stored texts; the deploy net is written into a temporary folder removed at exit.
    `labels` is a list of [id, name] pairs, `stored_size` [H, W], as the file stores them."""
    import atexit
    import shutil
    import tempfile

    from squeezecaffe.fileio import atomic_write_text
    from squeezecaffe.proto import parse_text

    for name, text in (("deploy net", deploy_text), ("transform", transform_text), ("data directory", data)):
        if text is not None and not isinstance(text, str):
            raise UserError(f"{where}: its {name} is a {type(text).__name__}, not text")
    deploy = None
    if deploy_text:
        folder = Path(tempfile.mkdtemp(prefix="squeezecaffe-carried-"))
        atexit.register(shutil.rmtree, folder, True)
        deploy = atomic_write_text(folder / f"{stem}.deploy.prototxt", deploy_text)
    transform = parse_text(transform_text, pb.TransformationParameter, f"{where} transform") if transform_text \
        is not None else None
    try:
        if not isinstance(labels or [], list) or not isinstance(stored_size or [], list):
            raise TypeError("not a list")
        classes = [ClassLabel(i, str(cid), str(name)) for i, (cid, name) in enumerate(labels)] if labels else None
        size = (int(stored_size[0]), int(stored_size[1])) if stored_size else None
    except (TypeError, ValueError, IndexError):
        raise UserError(f"{where}: its class list or stored image size is malformed") from None
    return Carried(deploy, transform, data if data and Path(data).is_dir() else None, classes, size)


def find_run_dir(path: Path) -> Path | None:
    """The run directory `path` is, or whose snapshots/ holds it."""
    for candidate in (path, path.parent, path.parent.parent):
        if rundir.is_run_dir(candidate):
            return candidate
    return None


def run_weights(run_dir: Path) -> Path:
    """best.caffemodel, else the newest complete snapshot (one with its marker: never a half-written one)."""
    if (run_dir / "best.caffemodel").is_file():
        return run_dir / "best.caffemodel"
    info = rundir.newest_snapshot(run_dir)
    if info is None:
        raise UserError(f"{run_dir}: run directory holds no best.caffemodel and no complete snapshot yet")
    return Path(info["caffemodel"])


def _input_shape(net: pb.NetParameter, where: str) -> tuple[int, int, int]:
    for lp in net.layer:
        if lp.type == "Input" and len(lp.input_param.shape):
            dims = list(lp.input_param.shape[0].dim)
            if len(dims) == 4:
                return int(dims[1]), int(dims[2]), int(dims[3])
    if len(net.input_shape):
        dims = list(net.input_shape[0].dim)
        if len(dims) == 4:
            return int(dims[1]), int(dims[2]), int(dims[3])
    if len(net.input_dim) == 4:
        return int(net.input_dim[1]), int(net.input_dim[2]), int(net.input_dim[3])
    raise UserError(f"{where}: a deploy net needs an Input layer (or input_shape) with N x C x H x W")


def _test_transform(train_val: Path) -> pb.TransformationParameter | None:
    """The transform of the Data layer Caffe's include/exclude rules put in the TEST net, never mirrored."""
    from squeezecaffe.caffe_rules.state import filter_net, make_state

    net = read_text(train_val, pb.NetParameter)
    for lp in filter_net(net, make_state(pb.TEST)).layer:
        if lp.type == "Data":
            tp = pb.TransformationParameter()
            tp.CopyFrom(lp.transform_param)
            tp.mirror = False
            return tp
    return None


def _labels(data_dir: Path | None, classes: int, where: str, carried: list[ClassLabel] | None = None
            ) -> list[ClassLabel]:
    """The data directory's labels.txt, else the ones a packed model file carries, else numbers."""
    path = data_dir / "labels.txt" if data_dir else None
    if path is None or not path.is_file():
        if carried is not None:
            if len(carried) != classes:
                raise UserError(f"{where}: carries {len(carried)} class names but outputs {classes} classes")
            return carried
        return numbered_labels(classes)
    labels = read_labels(path)
    if len(labels) != classes:
        raise UserError(f"{path}: lists {len(labels)} classes but {where} outputs {classes}")
    return labels


def _output_classes(deploy: pb.NetParameter, where: str) -> int:
    """Classes = the width of the net's last learned layer (conv10 or the classifier InnerProduct)."""
    from squeezecaffe.caffe_rules.shapes import infer_layers
    from squeezecaffe.caffe_rules.state import filter_net, make_state

    infos = infer_layers(filter_net(deploy, make_state("TEST")), where=where)
    shape = infos[-1].top_shapes[0] if infos and infos[-1].top_shapes else ()
    if len(shape) < 2:
        raise UserError(f"{where}: cannot tell the number of classes from its last layer")
    return int(shape[1])


def resolve_artifacts(weights: str, *, net: str | None = None, model: str | None = None, data: str | None = None,
                      mean_value: str | None = None, out_dir: Path | None = None,
                      carried: Carried | None = None) -> Artifacts:
    """Find deploy net, weights, preprocessing and labels for WEIGHTS (see the module docstring); `carried` is
    what a packed model file says of itself, used where the user names nothing."""
    from squeezecaffe.train.rundir import read_json

    transform = None
    if carried is not None:
        if not net and not model and carried.deploy is not None:
            net = str(carried.deploy)
        data = data or carried.data
        transform = carried.transform

    target = Path(weights)
    if not target.exists():
        raise UserError(f"{weights}: no such run directory or .caffemodel")
    if net and model:
        raise UserError("give --net or --model, not both")
    run_dir = find_run_dir(target.resolve())
    if target.is_dir() and run_dir is None:
        raise UserError(f"{weights}: not a run directory (no config.json and log.csv); give a .caffemodel")
    weights_path = run_weights(target) if target.is_dir() else target
    config = read_json(run_dir / "config.json") if run_dir else {}
    data_dir = None
    if data:  # a data directory, or an LMDB inside one (its labels.txt and manifest sit beside it)
        for candidate in (Path(data), Path(data).parent):
            if (candidate / "manifest.json").is_file():
                data_dir = candidate
                break
    if data_dir is None and config.get("data"):
        data_dir = Path(config["data"])
    manifest = read_manifest(data_dir) if data_dir and (data_dir / "manifest.json").is_file() else None
    notes = []
    if net:
        deploy_path = Path(net)
        if not deploy_path.is_file():
            raise UserError(f"{net}: deploy prototxt not found")
        deploy = read_text(deploy_path, pb.NetParameter)
    elif model:
        deploy, deploy_path = _generated_deploy(model, data_dir, out_dir or weights_path.parent)
    elif run_dir and (run_dir / "deploy.prototxt").is_file():
        deploy_path = run_dir / "deploy.prototxt"
        deploy = read_text(deploy_path, pb.NetParameter)
        if (run_dir / "train_val.prototxt").is_file():
            transform = _test_transform(run_dir / "train_val.prototxt")
    else:
        raise UserError(f"{weights}: say which net these weights belong to with --net deploy.prototxt or --model NAME")
    where = str(deploy_path)
    input_shape = _input_shape(deploy, where)
    if transform is None:
        transform = pb.TransformationParameter()
        if manifest is not None:
            transform.mean_value.extend(manifest.mean_values)
            if manifest.height > input_shape[1] and input_shape[1] == input_shape[2]:
                transform.crop_size = input_shape[1]  # trained on centre/random crops of the stored images
        elif not mean_value:
            notes.append("no run, data directory or --mean-value: images are fed without mean subtraction")
    if mean_value:
        try:
            values = [float(v) for v in mean_value.split(",")]
        except ValueError:
            raise UserError(f"--mean-value {mean_value}: expected numbers separated by commas (B,G,R)") from None
        del transform.mean_value[:]
        transform.ClearField("mean_file")
        transform.mean_value.extend(values)
    if transform.HasField("mean_file") and not Path(transform.mean_file).is_file() and data_dir is not None:
        transform.mean_file = str(data_dir / Path(transform.mean_file).name)
    # a file is brought to the stored size inside any padding: the TEST centre crop of a padded record is exactly that
    stored = (manifest.height - 2 * manifest.pad, manifest.width - 2 * manifest.pad) \
        if manifest is not None and manifest.height else carried.stored_size if carried is not None else None
    classes = _output_classes(deploy, where)
    labels = _labels(data_dir, classes, where, carried.labels if carried is not None else None)
    return Artifacts(deploy=deploy, deploy_path=deploy_path, weights=weights_path, transform=transform,
                     input_shape=input_shape, stored_size=stored, labels=labels,
                     run_dir=run_dir, data_dir=data_dir, manifest=manifest, notes=notes)


def _generated_deploy(model: str, data_dir: Path | None, out_dir: Path) -> tuple[pb.NetParameter, Path]:
    """The registered model's deploy net, sized by the data directory when there is one."""
    from squeezecaffe.netgen.builder import build_deploy
    from squeezecaffe.netgen.variants import file_stem, model_spec
    from squeezecaffe.solvers.settings import resolve

    spec = model_spec(model)
    cfg, _ = resolve(spec, data_dir=data_dir)
    deploy = build_deploy(spec, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{file_stem(model)}.deploy.prototxt"
    write_text(path, deploy)
    return deploy, path
