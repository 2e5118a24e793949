"""The manifest a data directory carries: what `build-lmdb` wrote, read by the solver settings (solvers/settings.py) and training.

A data directory (`OUT` of build-lmdb) holds `manifest.json` next to `train_lmdb/`, `val_lmdb/`,
`labels.txt` and `mean.binaryproto`; nets and solvers are sized from it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from squeezecaffe.data_tools.image_files import holds_images
from squeezecaffe.errors import UserError
from squeezecaffe.fileio import atomic_write_text, read_json_object

MANIFEST_NAME = "manifest.json"


@dataclass
class DataManifest:
    classes: int
    channels: int
    height: int
    width: int
    splits: dict[str, dict]  # split name -> {"count": N, "skipped": K, "keys_sha256": ..., "db": "train_lmdb"}
    mean_values: list[float] = field(default_factory=list)  # per channel, BGR
    std_values: list[float] = field(default_factory=list)  # per channel, BGR, inside any padding
    pad: int = 0  # border stored around every image (build-lmdb --pad): nets take centre/random crops inside it
    encoded: bool = False
    mixed_sizes: bool = False  # images of several sizes (in a split, or between splits): height/width are train's first
    layout: str = ""
    options: dict = field(default_factory=dict)

    def split_count(self, split: str) -> int:
        if split not in self.splits:
            raise UserError(f"data manifest has no '{split}' split (has: {', '.join(self.splits) or 'none'})")
        return int(self.splits[split]["count"])


def read_manifest(data_dir: str | Path) -> DataManifest:
    path = Path(data_dir) / MANIFEST_NAME
    if not path.is_file():
        raise UserError(_no_manifest(Path(data_dir)))
    raw = read_json_object(path, "a squeezecaffe manifest")
    problem = _manifest_problem(raw)
    if problem:
        raise UserError(f"{path}: not a valid squeezecaffe manifest ({problem})")
    return DataManifest(**raw)


def _no_manifest(data_dir: Path) -> str:
    """What a directory without a manifest is, and what to give instead (an LMDB of a data directory, images)."""
    if data_dir.is_file():
        return f"{data_dir}: a file, not a data directory (the OUT folder of 'squeezecaffe build-lmdb SRC OUT')"
    if not data_dir.is_dir():
        return f"{data_dir}: no such data directory (build one with 'squeezecaffe build-lmdb SRC {data_dir}')"
    if (data_dir / "data.mdb").is_file():
        if (data_dir.parent / MANIFEST_NAME).is_file():
            return f"{data_dir}: one database of the data directory {data_dir.parent}; give that directory"
        return (f"{data_dir}: a bare LMDB (no manifest says its classes, size and mean); build a data directory from "
                "the images with 'squeezecaffe build-lmdb SRC DATA'")
    if holds_images(data_dir, depth=3):  # class folders, train/<class>/, Tiny ImageNet's train/<wnid>/images
        return (f"{data_dir}: no {MANIFEST_NAME} here, and it holds images: to train on them, build a data "
                f"directory first ('squeezecaffe build-lmdb {data_dir} DATA') and give DATA")
    return f"{data_dir / MANIFEST_NAME}: no dataset manifest; build the data directory with " \
           f"'squeezecaffe build-lmdb SRC {data_dir}'"


# each field's JSON type (a manifest is written by build-lmdb; these catch a damaged or hand-edited one)
_FIELDS = {"classes": int, "channels": int, "height": int, "width": int, "splits": dict, "mean_values": list,
           "std_values": list, "pad": int, "encoded": bool, "mixed_sizes": bool,
           "layout": str, "options": dict}
_REQUIRED = ("classes", "channels", "height", "width", "splits")


def _manifest_problem(raw: dict) -> str | None:
    """What is wrong with a manifest's JSON object, or None."""
    for key, value in raw.items():
        kind = _FIELDS.get(key)
        if kind is None:
            return f"unknown key {repr(key)[:40]}"
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"{key} is {repr(value)[:40]}, expected {kind.__name__}"
    missing = [key for key in _REQUIRED if key not in raw]
    if missing:
        return f"no {', '.join(missing)}"
    if any(raw[key] < 1 for key in ("classes", "channels", "height", "width")) or raw.get("pad", 0) < 0:
        return "a size or count below 1"
    for name, split in raw["splits"].items():
        count = split.get("count") if isinstance(split, dict) else None
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            return f"split {repr(name)[:40]} has no record count"
    for key in ("mean_values", "std_values"):
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw.get(key, [])):
            return f"{key} holds a value that is not a number"
    return None


def write_manifest(data_dir: str | Path, manifest: DataManifest) -> Path:
    return atomic_write_text(Path(data_dir) / MANIFEST_NAME, json.dumps(asdict(manifest), indent=2) + "\n")
