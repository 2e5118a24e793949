"""The built-in default dataset: all of Fashion-MNIST as a build-lmdb data directory, built on first use.

`make train` and `make build-lmdb` without DATA (and `squeezecaffe default-data`) use it, so the mission's
commands work as typed on a fresh machine: 70,000 real 28x28 gray photos in 10 classes from Debian's
`dataset-fashion-mnist`, exported to PNG class folders beside the data directory, then converted with the
defaults a user gets (training split shuffled, 5% of it held out per class for validation).
"""

from __future__ import annotations

import json
from pathlib import Path

from squeezecaffe.data_tools.convert import ConvertOptions, build_lmdb
from squeezecaffe.data_tools.mnist import DEFAULT_SOURCE, export_pngs

VAL_FRACTION = 0.05  # 3,000 of the 60,000 training images


def is_current(data_dir: Path, *, val_fraction: float, limits: dict[str, int], shuffle: str) -> bool:
    """A finished data directory built from the PNG export with these options (the demo's reuse rule too)."""
    manifest = data_dir / "manifest.json"
    if not manifest.is_file():
        return False
    options = json.loads(manifest.read_text(encoding="utf-8")).get("options", {})
    return (options.get("limits") == limits and options.get("val_fraction") == val_fraction
            and options.get("gray") is True and options.get("shuffle") == shuffle)


def ensure_default_data(out: str | Path, src: str | Path = DEFAULT_SOURCE, quiet: bool = False) -> tuple[Path, bool]:
    """(the data directory, whether it was already there)."""
    out = Path(out)
    png = out.parent / f"{out.name}-png"
    if is_current(out, val_fraction=VAL_FRACTION, limits={}, shuffle="train"):
        return out, True
    export_pngs(png, src)
    build_lmdb(png, out, ConvertOptions(gray=True, force=True, progress=not quiet), val_fraction=VAL_FRACTION)
    return out, False
