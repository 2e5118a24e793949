"""Matplotlib without a display, and a figure saved as a PNG atomically (one home for every picture we write)."""

from __future__ import annotations

import io
from pathlib import Path

from squeezecaffe.fileio import atomic_write_bytes


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, out: Path, dpi: int = 110) -> Path:
    """Render `fig` to PNG, close it, and write the file atomically (never a half-written picture)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    return atomic_write_bytes(out, buf.getvalue())
