"""The datasets `squeezecaffe import` knows, each read from its published files into an ArrayDataset and written
as a PNG class-folder tree (png_export) that build-lmdb then converts like any user's images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from squeezecaffe.data_tools import cifar, mnist
from squeezecaffe.data_tools.png_export import ArrayDataset, export_pngs, exported_info
from squeezecaffe.errors import UserError

# name -> (loader(src, labels), what SRC holds)
IMPORTERS: dict[str, tuple[Callable[[Path, str], ArrayDataset], str]] = {
    "fashion-mnist": (lambda src, _: mnist.load(src, "fashion-mnist"),
                      "the four IDX(.gz) files (Debian: /usr/share/datasets/fashion-mnist)"),
    "mnist": (lambda src, _: mnist.load(src, "mnist"), "the four IDX(.gz) files"),
    "cifar10": (lambda src, labels: cifar.load("cifar10", src, labels),
                "cifar-10-batches-py/ or cifar-10-batches-bin/ (or the .tar.gz)"),
    "cifar100": (lambda src, labels: cifar.load("cifar100", src, labels),
                 "cifar-100-python/ or cifar-100-binary/ (or the .tar.gz)"),
}


def import_dataset(name: str, src: str | Path, out: str | Path, *, labels: str = "fine", jobs: int = 0,
                   force: bool = False) -> tuple[dict, bool]:
    """(the export's counts, whether a finished export was already there)."""
    if name not in IMPORTERS:
        raise UserError(f"unknown dataset '{name}'; known: {', '.join(IMPORTERS)}")
    info = exported_info(Path(out))
    if info is not None and not force:  # reused without reading SRC
        if info.get("dataset", name) != name:
            raise UserError(f"{out}: holds a finished {info['dataset']} export, not {name}; pass --force to replace "
                            "it or choose another folder")
        return info, True
    loader, _ = IMPORTERS[name]
    return export_pngs(out, loader(Path(src), labels), jobs=jobs, force=force), False
