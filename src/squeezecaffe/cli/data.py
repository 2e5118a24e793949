"""`squeezecaffe build-lmdb|import-fashion-mnist|default-data|mean|inspect`: the data verbs."""

from __future__ import annotations

import argparse
from pathlib import Path

from squeezecaffe.errors import UserError


def cmd_build_lmdb(args: argparse.Namespace) -> int:
    from squeezecaffe.data_tools.convert import ConvertOptions, build_lmdb
    from squeezecaffe.data_tools.image_files import describe_ignored
    from squeezecaffe.data_tools.layouts import parse_limits
    from squeezecaffe.netgen.config import parse_hw

    if args.jobs is not None and args.jobs < 0:
        raise UserError(f"--jobs {args.jobs}: must be 0 (all cores) or more")
    options = ConvertOptions(
        resize=parse_hw(args.resize, "--resize") if args.resize else None, gray=args.gray, encoded=args.encoded,
        shuffle="none" if args.keep_order else "all" if args.shuffle else "train", seed=args.seed,
        jobs=args.jobs or 0, max_skip=args.max_skip, force=args.force,
        splits=tuple(args.splits.split(",")), progress=not args.quiet, pad=args.pad, pad_mode=args.pad_mode)
    manifest, results = build_lmdb(args.src, args.out, options, root=args.root, classes=args.classes,
                                   val_fraction=args.val_fraction, limits=parse_limits(args.limit))
    held_out = manifest.options.get("val_fraction") or 0.0
    if held_out and args.val_fraction is None:
        print(f"{args.src} has no val split: held out {held_out:.0%} of train per class as val (seeded by --seed; "
              "--val-fraction 0 keeps none)")
    if manifest.options.get("ignored"):
        print(f"{args.src}: passed over {describe_ignored(manifest.options['ignored'])} (not images of a format "
              "read here, hidden, or beside the split folders; the formats: docs/data-tools.md)")
    if manifest.classes == 1:
        print(f"note: {args.src} holds one class" + (" (is it one class's folder? class folders go inside SRC)"
                                                     if manifest.layout == "class-folders" else "")
              + "; train needs two or more")
    empty = manifest.options.get("empty_classes") or []
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
        print(f"note: {len(empty)} of {manifest.classes} classes {'has' if len(empty) == 1 else 'have'} no training "
              f"image (label {shown})"
              + ("; list-file labels are class indices from 0, so 1-based labels leave class 0 empty"
                 if empty[0] == 0 and manifest.layout == "list-file" else ""))
    for r in results:
        rate = r.count / r.seconds if r.seconds else 0.0
        print(f"{r.name}: {r.count} images, {len(r.skipped)} skipped, {r.bytes / 1e6:.1f} MB, "
              f"{rate:,.0f} images/s -> {Path(args.out) / (r.name + '_lmdb')}")
    total = sum(r.count for r in results)
    skipped = sum(len(r.skipped) for r in results)
    seconds = sum(r.seconds for r in results)
    print(f"done: {total} images, {manifest.classes} classes, {skipped} skipped (see skipped.txt), "
          f"{total / seconds if seconds else 0:,.0f} images/s, {sum(r.bytes for r in results) / 1e6:.1f} MB; "
          f"mean (BGR) {', '.join(f'{v:.2f}' for v in manifest.mean_values)}")
    return 0


def cmd_mean(args: argparse.Namespace) -> int:
    from squeezecaffe.data_tools.mean import write_mean

    values, json_path = write_mean(args.db, args.output, args.decode)
    print(f"mean_value (BGR): {', '.join(f'{v:.4f}' for v in values)}")
    print(f"wrote {args.output} and {json_path}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from squeezecaffe.data_tools.inspect_db import describe, format_description, load_label_names, save_grid

    print(format_description(describe(args.db), load_label_names(Path(args.db))))
    if args.grid:
        print(f"grid: {save_grid(args.db, args.grid, count=args.count)}")
    return 0


def cmd_import_fashion_mnist(args: argparse.Namespace) -> int:
    """The older verb, kept as an alias of `import fashion-mnist`."""
    from squeezecaffe.data_tools.convert import ConvertOptions

    defaults = ConvertOptions()
    return cmd_import(argparse.Namespace(**vars(args), dataset="fashion-mnist", labels="fine", lmdb=None,
                                         val_fraction=0.0, quiet=True, pad=defaults.pad, pad_mode=defaults.pad_mode))


def cmd_import(args: argparse.Namespace) -> int:
    from squeezecaffe.data_tools.importers import import_dataset

    info, reused = import_dataset(args.dataset, args.src, args.out, labels=args.labels, jobs=args.jobs or 0,
                                  force=args.force)
    counts = ", ".join(f"{split} {n:,}" for split, n in info.items() if isinstance(n, int))
    print(f"{'already there' if reused else 'wrote'}: {args.out} ({args.dataset}: {counts} PNG images in class "
          "folders; names in words.txt)")
    if args.lmdb:
        from squeezecaffe.data_tools.convert import ConvertOptions, build_lmdb

        build_lmdb(Path(args.out), Path(args.lmdb),
                   ConvertOptions(gray=args.dataset.endswith("mnist"), force=args.force, progress=not args.quiet,
                                  pad=args.pad, pad_mode=args.pad_mode),
                   val_fraction=args.val_fraction)
    return 0


def cmd_default_data(args: argparse.Namespace) -> int:
    from squeezecaffe.data_tools.default_data import ensure_default_data

    out, reused = ensure_default_data(args.out, args.src, quiet=args.quiet)
    print(f"default dataset (Fashion-MNIST, 10 classes, 28x28 gray) {'already built' if reused else 'built'}: {out}")
    return 0


def register_data_verbs(sub: argparse._SubParsersAction) -> None:
    from squeezecaffe.cli.common import add_dataclass_options
    from squeezecaffe.data_tools.convert import ConvertOptions
    from squeezecaffe.data_tools.layouts import DEFAULT_VAL_FRACTION
    from squeezecaffe.data_tools.mnist import DEFAULT_SOURCE

    p = sub.add_parser("build-lmdb", help="image folders / list files -> Caffe LMDBs + mean + labels + manifest")
    p.add_argument("src", help="Tiny ImageNet root, class-folder root, a list file, or a folder with train.txt/val.txt")
    p.add_argument("out", help="output data directory (train_lmdb/, val_lmdb/, mean.binaryproto, labels.txt, ...)")
    p.add_argument("--resize", metavar="HxW", help="resize every image (bilinear), e.g. 64x64")
    add_dataclass_options(p, ConvertOptions, only=("gray", "encoded", "seed", "max_skip", "force", "pad", "pad_mode"))
    order = p.add_mutually_exclusive_group()
    order.add_argument("--keep-order", action="store_true",
                       help="keep the listing order (class by class, as convert_imageset without --shuffle); "
                            "by default the training split is shuffled, seeded by --seed")
    order.add_argument("--shuffle", action="store_true", help="shuffle every split, not only train")
    p.add_argument("--jobs", type=int, help="decoding processes (default: all cores)")
    p.add_argument("--val-fraction", type=float, default=None,
                   help=f"hold out this fraction of train per class as val, where SRC has no val split (default: "
                        f"{DEFAULT_VAL_FRACTION:g} there, seeded and stratified; 0 keeps none)")
    p.add_argument("--limit", action="append", default=[], metavar="SPLIT=N",
                   help="keep a stratified, seeded subset of N images of SPLIT, e.g. train=20000 (repeatable)")
    p.add_argument("--root", help="folder the list file's paths are relative to (default: the list's folder)")
    p.add_argument("--classes", type=int, help="class count for list files (labels must be below it)")
    p.add_argument("--splits", default=",".join(ConvertOptions().splits),
                   help="which splits to build (default: all present)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_build_lmdb)

    p = sub.add_parser("import-fashion-mnist",
                       help="Fashion-MNIST IDX files -> OUT/{train,test}/<class>/*.png + words.txt "
                            "(= import fashion-mnist, with Debian's files as the default source)")
    p.add_argument("out", help="output folder (reused when a finished export is already there)")
    p.add_argument("--src", default=str(DEFAULT_SOURCE),
                   help="folder of the four IDX(.gz) files (default: Debian's dataset-fashion-mnist)")
    p.add_argument("--jobs", type=int, help="writer processes (default: all cores)")
    p.add_argument("--force", action="store_true", help="replace OUT")
    p.set_defaults(func=cmd_import_fashion_mnist)

    from squeezecaffe.data_tools.importers import IMPORTERS

    p = sub.add_parser("import", help="a published dataset's files (fashion-mnist, mnist, cifar10, cifar100) -> "
                                      "OUT/{train,test}/<class>/*.png + words.txt [+ LMDBs]")
    p.add_argument("dataset", choices=list(IMPORTERS))
    p.add_argument("src", help="; ".join(f"{name}: {what}" for name, (_, what) in IMPORTERS.items()))
    p.add_argument("out", help="output folder of PNG class folders (reused when a finished export is there)")
    p.add_argument("--labels", default="fine", choices=["fine", "coarse"], help="CIFAR-100: 100 fine or 20 coarse")
    p.add_argument("--lmdb", metavar="DATA_DIR", help="also build a data directory from it (as build-lmdb)")
    p.add_argument("--val-fraction", type=float, default=None,
                   help=f"with --lmdb: share of train held out as val (default: as build-lmdb, {DEFAULT_VAL_FRACTION:g})")
    lmdb = p.add_argument_group("with --lmdb, as build-lmdb")
    add_dataclass_options(lmdb, ConvertOptions, only=("pad", "pad_mode"))
    p.add_argument("--jobs", type=int, help="writer processes (default: all cores)")
    p.add_argument("--force", action="store_true", help="replace OUT (and DATA_DIR)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("default-data", help="build (or reuse) the built-in default dataset: Fashion-MNIST as LMDBs")
    p.add_argument("out", nargs="?", default="out/data/fashion-mnist", help="data directory (default %(default)s)")
    p.add_argument("--src", default=str(DEFAULT_SOURCE), help="folder of the Fashion-MNIST IDX files")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_default_data)

    p = sub.add_parser("mean", help="mean image of a database (.binaryproto as compute_image_mean) + per-channel JSON")
    p.add_argument("db")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--decode", choices=("native", "color", "gray"), default="native",
                   help="encoded records: each file's own channels (native, compute_image_mean's rule), or all "
                        "decoded to 3 (color) or 1 (gray) channels, as force_color / force_gray in a net")
    p.set_defaults(func=cmd_mean)

    p = sub.add_parser("inspect", help="count, shapes, label histogram and encoding of a database")
    p.add_argument("db")
    p.add_argument("--grid", help="save a labelled grid of sample images to this PNG")
    p.add_argument("--count", type=int, default=64, help="images in the grid")
    p.set_defaults(func=cmd_inspect)


