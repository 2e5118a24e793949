"""Which files of a folder are images: the suffixes OpenCV decodes everywhere, what is hidden, and a walk that
lists the images below a folder (and counts what it passes over). Shared by build-lmdb's layouts, classify's
folders and the hint for a `--data` that is an image folder."""

from __future__ import annotations

import os
from pathlib import Path

# The formats every opencv-python wheel of our range decodes (libjpeg, libpng, libtiff, libwebp, OpenJPEG and
# OpenCV's own BMP and PxM readers). GIF and AVIF are not among them: OpenCV reads them only from 4.11 on, and only
# where built with them, so such files are counted as ignored rather than failing a build on another machine.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp",
                            ".jp2", ".pbm", ".pgm", ".ppm", ".pnm"})
# Folders that archivers and notebooks leave beside the images: never a class, never walked.
NOT_CLASS_FOLDERS = frozenset({"__MACOSX"})


def _suffix(name: str) -> str:
    """The lower-case suffix, "" for none (`.bashrc` has none, as for Path.suffix)."""
    dot = name.rfind(".")  # Path.suffix's rule: a dot that is neither the first nor the last character
    return name[dot:].lower() if 0 < dot < len(name) - 1 else ""


def is_hidden(name: str) -> bool:
    """Dot files and folders (macOS's `._x.jpg`, `.ipynb_checkpoints`) and the archivers' folders: never data."""
    return name.startswith(".") or name in NOT_CLASS_FOLDERS


def is_image_name(name: str) -> bool:
    """A file a folder walk takes as an image: a known suffix, and not hidden (`._photo.jpg` is macOS metadata)."""
    return not is_hidden(name) and _suffix(name) in IMAGE_SUFFIXES


def holds_images(folder: Path, depth: int = 1) -> bool:
    """Image files in `folder` itself (depth 1) or within `depth` levels below it (hidden folders aside); a folder
    that cannot be read holds none (callers only choose a layout or the wording of an error from it)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return False
    return any(entry.is_file() and is_image_name(entry.name) for entry in entries) or (
        depth > 1 and any(entry.is_dir() and not is_hidden(entry.name) and holds_images(Path(entry.path), depth - 1)
                          for entry in entries))


def images_under(folder: Path, root: Path, ignored: dict[str, int]) -> list[str]:
    """Image files anywhere below `folder` as paths relative to `root`, in the order Paths sort in; the other
    files are counted into `ignored` (by suffix, "hidden" for dot files), hidden folders are not walked.

    A walk with os.scandir, each directory's entries in name order: that is the order of sorted
    Paths (component by component), and the entries already say which are files, so nothing is
    stat'ed twice; Path.rglob + sorted took a fifth of the whole conversion's time on 20,000 images.
    Symlinked directories are not followed (as rglob); symlinked files are.
    """
    found: list[str] = []
    top = folder.relative_to(root).as_posix()

    def walk(path: str, prefix: str) -> None:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if not is_hidden(entry.name):
                    walk(entry.path, f"{prefix}{entry.name}/")
            elif not entry.is_file():
                continue  # a symlinked directory (not followed, as rglob), a socket, a broken link
            elif is_image_name(entry.name):
                found.append(prefix + entry.name)
            else:
                kind = "hidden" if is_hidden(entry.name) else _suffix(entry.name) or "(no suffix)"
                ignored[kind] = ignored.get(kind, 0) + 1

    walk(str(folder), "" if top == "." else f"{top}/")
    return found


def describe_ignored(ignored: dict[str, int]) -> str:
    """`.txt 2, hidden 1`: what was passed over, by kind, most frequent first."""
    kinds = sorted(ignored.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{kind} {count}" for kind, count in kinds)
