"""Frozen layers, the Caffe way: `lr_mult: 0` and `decay_mult: 0` on every learned blob of the layers a pattern
names (a layer, or a whole module such as `fire2`), in the generated train_val. The weights they start from are
fitted by train/finetune.py."""

from __future__ import annotations

from fnmatch import fnmatch

from squeezecaffe.errors import UserError
from squeezecaffe.proto import pb

Shape = tuple[int, ...]


def _blob_count(lp: pb.LayerParameter) -> int:
    """Learned blobs of a layer, as Caffe creates them."""
    if lp.type in ("Convolution", "Deconvolution"):
        return 1 + lp.convolution_param.bias_term
    if lp.type == "InnerProduct":
        return 1 + lp.inner_product_param.bias_term
    if lp.type == "Scale":
        return (len(lp.bottom) == 1) + lp.scale_param.bias_term
    if lp.type == "BatchNorm":
        return 3
    return 0


def _matches(name: str, pattern: str) -> bool:
    """A pattern names a layer (fnmatch) or a whole module: `fire2` also matches `fire2/squeeze1x1`, ..."""
    return fnmatch(name, pattern) or fnmatch(name, f"{pattern}/*")


def freeze(net: pb.NetParameter, patterns: list[str]) -> list[str]:
    """Set lr_mult and decay_mult to 0 on every learned blob of the layers the patterns name; returns their names.
    A pattern that names no layer with learned blobs is a one-line error."""
    frozen = []
    for pattern in patterns:
        hits = [lp for lp in net.layer if _blob_count(lp) and _matches(lp.name, pattern)]
        if not hits:
            modules = sorted({lp.name.split("/")[0] for lp in net.layer if _blob_count(lp)})
            raise UserError(f"--freeze {pattern}: no layer with learned weights matches it (modules: "
                            f"{', '.join(modules)})")
        for lp in hits:
            count = _blob_count(lp)
            while len(lp.param) < count:
                lp.param.add()
            for p in lp.param[:count]:
                p.lr_mult, p.decay_mult = 0.0, 0.0
            if lp.name not in frozen:
                frozen.append(lp.name)
    return frozen
