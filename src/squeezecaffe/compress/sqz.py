"""A `.sqz` file opened by its users: decoded to a dense .caffemodel (`decompress`, and `open_sqz` for eval, classify
and export), and the check that a container gives back bit for bit the weights it was given. Nothing here imports
the compression pipeline: reading a .sqz costs the container and the codec only."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from squeezecaffe.caffe_rules.blobs import blob_values
from squeezecaffe.compress.codec import decode_model
from squeezecaffe.compress.container import read_container
from squeezecaffe.errors import UserError
from squeezecaffe.evaluation.artifacts import Carried, carried_from
from squeezecaffe.fileio import atomic_write_text, ensure_writable_dir
from squeezecaffe.proto import pb, write_binary


def same_weights(a: pb.NetParameter, b: pb.NetParameter, where: str) -> None:
    """Bit-identical blobs, layer by layer: the container must give back exactly what it was given."""
    theirs = {lp.name: lp for lp in b.layer}
    for lp in a.layer:
        if not len(lp.blobs):
            continue
        other = theirs.get(lp.name)
        if other is None or len(other.blobs) != len(lp.blobs):
            raise UserError(f"{where}: decoding lost layer '{lp.name}'")
        for x, y in zip(lp.blobs, other.blobs, strict=True):
            if not np.array_equal(blob_values(x).astype(np.float32).view(np.uint32),
                                  blob_values(y).astype(np.float32).view(np.uint32)):
                raise UserError(f"{where}: layer '{lp.name}' decodes to different values (a codec error)")


def decompress(sqz: str | Path, output: str | Path, deploy: str | Path | None = None) -> tuple[Path, Path | None]:
    """A .sqz -> a dense .caffemodel (and the deploy.prototxt the container carries, when asked)."""
    for target in (output, deploy):
        if target is not None:
            ensure_writable_dir(Path(target).parent, "cannot write the output there")
    box = read_container(sqz)
    model = decode_model(box)
    path = write_binary(output, model)
    deploy_path = None
    if deploy is not None:
        text = box.header.get("deploy")
        if text is not None and not isinstance(text, str):
            raise UserError(f"{sqz}: its deploy net is a {type(text).__name__}, not text")
        if not text:
            raise UserError(f"{sqz}: carries no deploy net (compressed without one); give --net when you use it")
        deploy_path = atomic_write_text(deploy, text)
    return path, deploy_path


def open_sqz(path: str) -> tuple[str, Carried]:
    """A .sqz decoded for `eval`/`classify`/`export`: (its dense .caffemodel in a temporary folder removed at exit,
    what it carries: deploy net, TEST transform, data directory)."""
    import atexit
    import tempfile

    box = read_container(path)
    folder = Path(tempfile.mkdtemp(prefix="squeezecaffe-sqz-"))
    atexit.register(shutil.rmtree, folder, True)
    stem = Path(path).name.removesuffix(".sqz")
    weights = write_binary(folder / f"{stem}.caffemodel", decode_model(box))
    h = box.header
    return str(weights), carried_from(h.get("deploy"), h.get("transform"), h.get("data"), stem, path,
                                      h.get("labels"), h.get("stored_size"))
