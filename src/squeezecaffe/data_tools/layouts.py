"""Dataset layouts -> splits of (relative path, label), with labels = index of the sorted class ids.

Three layouts are recognised:
- Tiny ImageNet 200 as distributed (wnids.txt, words.txt, train/<wnid>/images, val/ with
  val_annotations.txt, unlabelled test/images);
- class folders: root/<class>/**/<image> (image_files.py says which files are images), or
  root/{train,val,test}/<class>/... (split folders also as SPLIT_FOLDERS names them),
  with an optional root/words.txt (`folder<TAB>human-readable name`, Tiny ImageNet's format); hidden files and
  folders (a leading dot: macOS's `._name.jpg` companions, `.ipynb_checkpoints`) and `__MACOSX` are passed over,
  and every other file that is not an image is counted in `Dataset.ignored`;
- Caffe list files: `relative/path label` per line (the path may contain spaces).

Any layout without a val split can have one held out of train (`val_fraction`, seeded, stratified),
and any split can be cut to a stratified subset (`limits`).
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from squeezecaffe.data_tools.image_files import IMAGE_SUFFIXES, holds_images, images_under, is_hidden
from squeezecaffe.errors import UserError

SPLIT_NAMES = ("train", "val", "test")
# Split folders as datasets ship them, matched in any case (Kaggle's valid/, Train/ and Test/, training/...).
SPLIT_FOLDERS = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}


@dataclass
class Dataset:
    root: Path  # image paths are relative to this
    layout: str
    class_ids: list[str]  # index = label
    splits: dict[str, list[tuple[str, int]]]
    class_words: dict[str, str] = field(default_factory=dict)
    labelled: dict[str, bool] = field(default_factory=dict)  # False for Tiny ImageNet's test split
    val_held_out: float = 0.0  # the share of train per class held out as val (0: the source's own val, or none)
    ignored: dict[str, int] = field(default_factory=dict)  # files passed over in image folders, by suffix or "hidden"

    @property
    def classes(self) -> int:
        return len(self.class_ids)

    def labels_txt(self) -> str:
        """`index<TAB>class id<TAB>words` per line, the file eval/classify read names from."""
        return "".join(f"{i}\t{cid}\t{self.class_words.get(cid, cid)}\n" for i, cid in enumerate(self.class_ids))


@dataclass(frozen=True)
class ClassLabel:
    index: int
    id: str  # folder name / wnid: what a predictions file names
    name: str  # human-readable words


def read_labels(path: str | Path) -> list[ClassLabel]:
    """labels.txt as build-lmdb writes it (`index<TAB>class id<TAB>words`); indices must run 0..n-1."""
    path = Path(path)
    labels = []
    for n, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if not parts[0].strip().isdigit() or int(parts[0]) != len(labels):
            raise UserError(f"{path}:{n}: expected '{len(labels)}<TAB>class id<TAB>words'")
        cid = parts[1].strip() if len(parts) > 1 and parts[1].strip() else parts[0].strip()
        name = parts[2].strip() if len(parts) > 2 and parts[2].strip() else cid
        labels.append(ClassLabel(len(labels), cid, name))
    return labels


def numbered_labels(count: int) -> list[ClassLabel]:
    """Stand-in names where a model comes with no labels.txt."""
    return [ClassLabel(i, str(i), str(i)) for i in range(count)]


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None


def read_words(path: Path, class_ids: list[str]) -> dict[str, str]:
    """`class id<TAB>words` lines (Tiny ImageNet's words.txt lists all of WordNet: keep only our classes)."""
    if not path.is_file():
        return {}
    wanted = set(class_ids)
    words = {}
    for line in _read_lines(path):
        cid, _, text = line.partition("\t")
        if cid in wanted and text.strip():
            words[cid] = text.strip()
    return words


def tiny_imagenet(root: Path) -> Dataset:
    wnids = sorted({line.strip() for line in _read_lines(root / "wnids.txt") if line.strip()})
    index = {w: i for i, w in enumerate(wnids)}
    words = read_words(root / "words.txt", wnids)
    train = []
    ignored: dict[str, int] = {}
    for wnid in wnids:
        folder = root / "train" / wnid / "images"
        if not folder.is_dir():
            raise UserError(f"{folder}: missing training folder for class {wnid} listed in wnids.txt")
        files = images_under(folder, root, ignored)
        if not files:
            raise UserError(f"{folder}: class folder holds no images")
        train += [(rel, index[wnid]) for rel in files]
    splits = {"train": train}
    annotations = root / "val" / "val_annotations.txt"
    if annotations.is_file():
        val = []
        for n, line in enumerate(_read_lines(annotations), start=1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 2 or parts[1] not in index:
                raise UserError(f"{annotations}:{n}: expected 'file<TAB>wnid...' with a wnid from wnids.txt")
            val.append((f"val/images/{parts[0]}", index[parts[1]]))
        splits["val"] = sorted(val)
    labelled = {"train": True, "val": True}
    if (root / "test" / "images").is_dir():
        splits["test"] = [(rel, 0) for rel in images_under(root / "test" / "images", root, ignored)]
        labelled["test"] = False
    return Dataset(root, "tiny-imagenet", wnids, splits, words, labelled, ignored=ignored)


def _class_folder_split(folder: Path, root: Path, ignored: dict[str, int]) -> tuple[list[str], dict[str, list[str]]]:
    """Class names (sorted) and each class's images relative to the dataset's `root`."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not is_hidden(p.name))
    if not classes:
        if holds_images(folder):
            raise UserError(f"{folder}: images but no class folders: give the folder that holds the class folders "
                            f"(<SRC>/<class>/*.jpg), or write a list file ('path label' per line)")
        raise UserError(f"{folder}: no class folders (expected {folder}/<class>/*.jpg)")
    files = {c: images_under(folder / c, root, ignored) for c in classes}
    for c, items in files.items():
        if not items:
            raise UserError(f"{folder / c}: class folder holds no images "
                            f"({', '.join(sorted(s[1:] for s in IMAGE_SUFFIXES))})")
    return classes, files


def _holds_class_folders(folder: Path) -> bool:
    """Sub-folders and no images of its own: a split folder of classes (`Train/` holding images is a class)."""
    with os.scandir(folder) as entries:  # the entries say what they are: no stat per file of a large flat folder
        has_folders = any(entry.is_dir() and not is_hidden(entry.name) for entry in entries)
    return has_folders and not holds_images(folder)


def _split_folders(root: Path) -> dict[str, Path]:
    """The split folders of a class-folder dataset, {split: folder} in SPLIT_NAMES order; empty where SRC's folders
    are the classes. A split layout has a train folder of class folders, or only split folders (val/ and test/ of
    class folders, which eval reads; build-lmdb then finds no training images), so classes named Train or Test,
    holding images, stay classes."""
    folders = [p for p in root.iterdir() if p.is_dir() and not is_hidden(p.name)]
    found: dict[str, list[Path]] = {}
    for folder in folders:
        split = next((s for s, names in SPLIT_FOLDERS.items() if folder.name.lower() in names), None)
        if split:
            found.setdefault(split, []).append(folder)
    trains = found.get("train", [])
    only_splits = bool(found) and sum(map(len, found.values())) == len(folders)
    if not (trains and all(map(_holds_class_folders, trains))) and not (
            only_splits and any(_holds_class_folders(p) for group in found.values() for p in group)):
        return {}
    for split, matches in found.items():
        if len(matches) > 1:
            raise UserError(f"{root}: {' and '.join(sorted(p.name for p in matches))} are both the {split} split; "
                            "keep one")
    return {s: found[s][0] for s in SPLIT_NAMES if s in found}


def _split_layout(root: Path, split_dirs: dict[str, Path], ignored: dict[str, int]) -> Dataset:
    """Splits of class folders; a test folder of bare images is an unlabelled test split (Kaggle's submission set)."""
    beside = [p for p in root.iterdir() if p.is_dir() and not is_hidden(p.name) and p not in split_dirs.values()]
    if beside:  # not a split: left out, and said (an "extra/" or "unlabeled/" folder is not trained on)
        ignored["folders beside the splits"] = len(beside)
    labelled = {s: _holds_class_folders(folder) for s, folder in split_dirs.items()}
    unlabelled = [s for s, ok in labelled.items() if not ok and s != "test"]
    if unlabelled:
        raise UserError(f"{split_dirs[unlabelled[0]]}: images but no class folders, so no labels for the "
                        f"{unlabelled[0]} split (<split>/<class>/*.jpg)")
    named = {s: _class_folder_split(folder, root, ignored) for s, folder in split_dirs.items() if labelled[s]}
    classes = named["train"][0] if "train" in named else sorted({c for found, _ in named.values() for c in found})
    index = {c: i for i, c in enumerate(classes)}
    splits = {}
    for split, (split_classes, files) in named.items():
        unknown = sorted(set(split_classes) - set(classes))
        if unknown:
            raise UserError(f"{split_dirs[split]}: class folder '{unknown[0]}' does not exist in {split_dirs['train']}")
        splits[split] = [(rel, index[c]) for c in split_classes for rel in files[c]]
    if "test" in split_dirs and not labelled["test"]:
        splits["test"] = [(rel, 0) for rel in images_under(split_dirs["test"], root, ignored)]
    return Dataset(root, "class-folders", classes, splits, read_words(root / "words.txt", classes),
                   labelled=labelled, ignored=ignored)


def class_folders(root: Path) -> Dataset:
    ignored: dict[str, int] = {}
    split_dirs = _split_folders(root)
    if split_dirs:
        return _split_layout(root, split_dirs, ignored)
    classes, files = _class_folder_split(root, root, ignored)
    splits = {"train": [(rel, i) for i, c in enumerate(classes) for rel in files[c]]}
    return Dataset(root, "class-folders", classes, splits, read_words(root / "words.txt", classes),
                   labelled={"train": True}, ignored=ignored)


def stratified_split(items: list[tuple[str, int]], val_fraction: float, seed: int) -> dict[str, list[tuple[str, int]]]:
    """Hold out `val_fraction` of each class (at least one image where the class has two or more)."""
    by_class: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for item in items:
        by_class[item[1]].append(item)
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(by_class):
        group = sorted(by_class[label])
        rng.shuffle(group)
        n_val = min(len(group) - 1, max(1, round(len(group) * val_fraction))) if len(group) > 1 else 0
        val += group[:n_val]
        train += group[n_val:]
    return {"train": sorted(train), "val": sorted(val)}


def parse_list_file(path: Path, classes: int | None = None) -> list[tuple[str, int]]:
    """`relative/path label` lines; the label is after the LAST space, so paths may contain spaces."""
    items = []
    for n, line in enumerate(_read_lines(path), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        rel, sep, label_text = line.rstrip().rpartition(" ")
        if not sep or not rel:
            raise UserError(f"{path}:{n}: expected 'relative/path label', got {line!r}")
        try:
            label = int(label_text)
        except ValueError:
            raise UserError(f"{path}:{n}: label {label_text!r} is not an integer") from None
        if label < 0 or (classes is not None and label >= classes):
            bound = f" (--classes {classes})" if classes is not None else ""
            raise UserError(f"{path}:{n}: label {label} is outside the class range 0..{(classes or 1) - 1}{bound}")
        items.append((rel, label))
    if not items:
        raise UserError(f"{path}: list file has no entries")
    return items


def stratified_subset(items: list[tuple[str, int]], count: int, seed: int) -> list[tuple[str, int]]:
    """`count` items with every class in its share (seeded); the survivors keep their order.

    Each class's items are shuffled and item j of a class of n gets the key (j + 0.5) / n; the
    `count` smallest keys are the same fraction of every class, to within one image.
    """
    if count >= len(items):
        return list(items)
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, (_, label) in enumerate(items):
        by_class[label].append(i)
    rng = random.Random(seed)
    keyed = []
    for label in sorted(by_class):
        members = by_class[label]
        rng.shuffle(members)
        keyed += [((j + 0.5) / len(members), label, i) for j, i in enumerate(members)]
    keep = sorted(i for _, _, i in sorted(keyed)[:count])
    return [items[i] for i in keep]


def list_files(src: Path, root: Path | None, classes: int | None) -> Dataset:
    """SRC is one list file, or a folder with train.txt/val.txt/test.txt."""
    if src.is_dir():
        lists = {s: src / f"{s}.txt" for s in SPLIT_NAMES if (src / f"{s}.txt").is_file()}
        splits = {s: parse_list_file(p, classes) for s, p in lists.items()}
        root = root or src
    else:
        splits = {"train": parse_list_file(src, classes)}
        root = root or src.parent
    n_classes = classes or 1 + max(label for items in splits.values() for _, label in items)
    return Dataset(root, "list-file", [str(i) for i in range(n_classes)], splits,
                   labelled={s: True for s in splits})


def parse_limits(items: list[str]) -> dict[str, int]:
    """['train=20000', 'val=2000'] -> {'train': 20000, 'val': 2000} (the --limit option)."""
    limits = {}
    for item in items:
        split, sep, text = item.partition("=")
        if not sep or split not in SPLIT_NAMES or not text.isdigit() or int(text) <= 0:
            raise UserError(f"--limit '{item}': expected SPLIT=N with SPLIT one of {', '.join(SPLIT_NAMES)} "
                            "and N a positive integer")
        limits[split] = int(text)
    return limits


# The validation share held out of train when the source has none and the user named none: a run needs a split no
# update has seen to pick its snapshot and drive the LR controller (DIGITS holds one out by default too).
DEFAULT_VAL_FRACTION = 0.1


def discover(src: str | Path, *, root: str | Path | None = None, classes: int | None = None,
             val_fraction: float | None = None, seed: int = 0, limits: dict[str, int] | None = None) -> Dataset:
    """Recognise the layout of SRC and list its splits; hold out val, then cut splits to their limits.
    `val_fraction` None: DEFAULT_VAL_FRACTION where SRC has no val split, none where it has; 0: none."""
    src = Path(src)
    if not src.exists():
        raise UserError(f"{src}: no such file or directory")
    if val_fraction is not None and not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--val-fraction {val_fraction}: must be in [0, 1)")
    root_path = Path(root) if root else None
    if src.is_file() or (src / "train.txt").is_file():
        dataset = list_files(src, root_path, classes)
    elif (src / "wnids.txt").is_file():
        dataset = tiny_imagenet(src)
    else:
        dataset = class_folders(src)
    if val_fraction is None:
        val_fraction = 0.0 if dataset.splits.get("val") else DEFAULT_VAL_FRACTION
    if val_fraction > 0:
        if dataset.splits.get("val"):
            raise UserError(f"{src}: already has a val split; --val-fraction holds one out of train only "
                            "where there is none")
        dataset.splits.update(stratified_split(dataset.splits.get("train", []), val_fraction, seed))
        dataset.labelled["val"] = True
        dataset.val_held_out = val_fraction
    for split, count in (limits or {}).items():
        if split in dataset.splits:
            dataset.splits[split] = stratified_subset(dataset.splits[split], count, seed)
    return dataset
