"""The manifest a data directory carries: what `build-lmdb` wrote, read by netgen and training.

A data directory (`OUT` of build-lmdb) holds `manifest.json` next to `train_lmdb/`, `val_lmdb/`,
`labels.txt` and `mean.binaryproto`; nets and solvers are sized from it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from squeezecaffe.errors import UserError
from squeezecaffe.fileio import atomic_write_text

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
    layout: str = ""
    options: dict = field(default_factory=dict)

    def split_count(self, split: str) -> int:
        if split not in self.splits:
            raise UserError(f"data manifest has no '{split}' split (has: {', '.join(self.splits) or 'none'})")
        return int(self.splits[split]["count"])


def read_manifest(data_dir: str | Path) -> DataManifest:
    path = Path(data_dir) / MANIFEST_NAME
    if not path.is_file():
        raise UserError(f"{path}: no dataset manifest; build the data directory with "
                        f"'squeezecaffe build-lmdb SRC {data_dir}'")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return DataManifest(**raw)
    except (json.JSONDecodeError, TypeError) as exc:
        raise UserError(f"{path}: not a valid squeezecaffe manifest ({exc})") from None


def write_manifest(data_dir: str | Path, manifest: DataManifest) -> Path:
    return atomic_write_text(Path(data_dir) / MANIFEST_NAME, json.dumps(asdict(manifest), indent=2) + "\n")
