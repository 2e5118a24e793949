"""`inspect`: what a database holds (count, shapes, labels, encoding) and a labelled grid of samples."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from squeezecaffe.data_tools.layouts import read_labels
from squeezecaffe.data_tools.lmdb_io import LmdbReader
from squeezecaffe.errors import UserError
from squeezecaffe.fileio import atomic_savefig
from squeezecaffe.proto import pb


def load_label_names(db: Path) -> dict[int, str]:
    """labels.txt beside the database (build-lmdb writes it), else bare indices."""
    labels = Path(db).parent / "labels.txt"
    return {c.index: c.name for c in read_labels(labels)} if labels.is_file() else {}


def describe(db: str | Path) -> dict:
    reader = LmdbReader(db)
    if not len(reader):
        raise UserError(f"{db}: database is empty")
    labels: Counter[int] = Counter()
    shapes: Counter[tuple[int, ...]] = Counter()
    encoded = 0
    for _, datum in reader.iter_datums():
        labels[int(datum.label)] += 1
        if datum.encoded:
            encoded += 1
        else:
            shapes[(datum.channels, datum.height, datum.width)] += 1
    # Encoded records carry no size: decode the first 64 as stored (Caffe's native decoding) to show what they hold.
    sampled = sorted({_stored_shape(reader.datum(i)) for i in range(min(len(reader), 64))}) if encoded else []
    return {"path": str(db), "count": len(reader), "encoded": encoded, "raw": len(reader) - encoded,
            "shapes": {"x".join(map(str, k)): v for k, v in shapes.items()},
            "sampled_encoded_shapes": sampled,
            "labels": dict(sorted(labels.items()))}


def _stored_shape(datum: pb.Datum) -> str:
    """`CxHxW` of an encoded record as its file holds it (`3x40x40`, `4x40x40` for RGBA, `1x40x40 16-bit`)."""
    img = cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        return "undecodable"
    chw = (1 if img.ndim == 2 else img.shape[2], img.shape[0], img.shape[1])
    return "x".join(map(str, chw)) + ("" if img.dtype == np.uint8 else f" {img.dtype.itemsize * 8}-bit")


def format_description(info: dict, names: dict[int, str]) -> str:
    lines = [f"{info['path']}: {info['count']} records ({info['raw']} raw, {info['encoded']} encoded)",
             "shapes (CxHxW): " + ", ".join([f"{k} x{v}" for k, v in info["shapes"].items()]
                                            + [f"{k} (sampled, encoded)" for k in info["sampled_encoded_shapes"]])]
    counts = info["labels"]
    lines.append(f"labels: {len(counts)} classes, {min(counts.values())}..{max(counts.values())} images per class")
    for label, n in list(counts.items())[:20]:
        lines.append(f"  {label:5d} {names.get(label, ''):30.30s} {n}")
    if len(counts) > 20:
        lines.append(f"  ... {len(counts) - 20} more")
    return "\n".join(lines)


def save_grid(db: str | Path, out: str | Path, count: int = 64, seed: int = 0) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reader = LmdbReader(db, color="color")  # encoded files as 3-channel 8-bit BGR (RGBA, gray, 16-bit alike)
    names = load_label_names(Path(db))
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(reader), size=min(count, len(reader)), replace=False))
    cols = int(np.ceil(np.sqrt(len(picks))))
    rows = int(np.ceil(len(picks) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.4, rows * 1.5), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), picks, strict=False):
        img, label = reader[int(i)]
        shown = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)[:, :, ::-1]  # BGR -> RGB
        ax.imshow(shown, cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=255)
        ax.set_title(f"{label}: {names.get(label, '')}"[:18], fontsize=6)
    out = Path(out)
    fig.tight_layout()
    atomic_savefig(fig, out, dpi=100)
    plt.close(fig)
    return out
