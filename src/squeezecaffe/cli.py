"""`squeezecaffe <verb>`: the command line. Each verb is a thin shell over a library function.

A UserError anywhere becomes one line on stderr and exit code 2; so do bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from squeezecaffe import __version__
from squeezecaffe.cli_common import is_model_name, parse_overrides
from squeezecaffe.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (exit 2) instead of usage + message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message}")


def _add_net_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--classes", type=int, help="number of classes (default: the model's dataset)")
    p.add_argument("--input", help="network input HxW, e.g. 64x64")
    p.add_argument("--batch-size", type=int, help="TRAIN batch size")
    p.add_argument("--test-batch-size", type=int, help="TEST batch size")
    p.add_argument("--train-size", type=int, help="training images (sizes max_iter and snapshots)")
    p.add_argument("--val-size", type=int, help="validation images (sizes test_iter)")
    p.add_argument("--epochs", type=int, help="training epochs")
    p.add_argument("--data", help="a data directory written by build-lmdb (classes, sizes and mean from its manifest)")
    p.add_argument("--mean-file", action="store_true", help="use DATA/mean.binaryproto instead of per-channel mean_value")
    p.add_argument("--solver-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any SolverParameter field, e.g. base_lr=0.01 (repeatable)")


def _resolve_from_args(args: argparse.Namespace, spec):
    from squeezecaffe.netgen.config import parse_hw, resolve

    return resolve(
        spec, classes=args.classes, input_size=parse_hw(args.input) if args.input else None,
        batch_size=args.batch_size, test_batch_size=args.test_batch_size, train_size=args.train_size,
        val_size=args.val_size, epochs=args.epochs, data_dir=args.data, use_mean_file=args.mean_file)


def _load_net_or_model(target: str, args: argparse.Namespace):
    """A registered model name (its deploy net) or a path to any prototxt; returns (net, data_shape)."""
    from squeezecaffe.netgen.registry import get_model
    from squeezecaffe.proto import pb, read_text

    if is_model_name(target):
        from squeezecaffe.netgen.builder import build_deploy

        spec = get_model(target)
        cfg, _ = _resolve_from_args(args, spec)
        return build_deploy(spec, cfg), None
    from squeezecaffe.netgen.checks import check_net
    from squeezecaffe.netgen.config import parse_hw

    net = read_text(target, pb.NetParameter)
    check_net(net, target)
    data_shape = None
    if getattr(args, "input", None):
        h, w = parse_hw(args.input)
        data_shape = (1, 3, h, w)
    return net, data_shape


# ---------------------------------------------------------------- verbs


def cmd_list(args: argparse.Namespace) -> int:
    from squeezecaffe.netgen.builder import build_deploy
    from squeezecaffe.netgen.config import resolve
    from squeezecaffe.netgen.registry import MODELS
    from squeezecaffe.netgen.summary import summarize

    print(f"{'model':22s} {'input':>9s} {'classes':>7s} {'weights':>11s} {'trainable':>11s}  description")
    for spec in MODELS.values():
        cfg, _ = resolve(spec)
        s = summarize(build_deploy(spec, cfg))
        h, w = cfg.input_size
        print(f"{spec.name:22s} {f'{h}x{w}x3':>9s} {cfg.classes:7d} {s.weights:11,} {s.trainable:11,}  {spec.description}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from squeezecaffe.netgen.summary import format_summary, summarize

    net, data_shape = _load_net_or_model(args.model, args)
    print(format_summary(summarize(net, data_shape, where=args.model)))
    return 0


def cmd_gen(args: argparse.Namespace) -> int:
    from squeezecaffe.netgen.config import parse_hw
    from squeezecaffe.netgen.emit import generate, write_generated
    from squeezecaffe.netgen.recipes import resolve_recipe
    from squeezecaffe.netgen.registry import get_model

    spec = get_model(args.model)
    result = resolve_recipe(
        spec, args.recipe, classes=args.classes, input_size=parse_hw(args.input) if args.input else None,
        batch_size=args.batch_size, test_batch_size=args.test_batch_size, train_size=args.train_size,
        val_size=args.val_size, epochs=args.epochs, data_dir=args.data, use_mean_file=args.mean_file)
    cfg, sched = result.cfg, result.sched
    values = dict(result.values)
    out = Path(args.out)
    overrides = parse_overrides(args.solver_set)
    if args.base_lr is not None:
        overrides["base_lr"] = args.base_lr

    def write() -> list[Path]:
        model = generate(spec, out, cfg, sched, overrides, snapshot_prefix=str(out / "snapshots" / spec.name))
        return write_generated(model, out)

    if overrides.get("base_lr") == "auto":
        from squeezecaffe.train.lr_find import auto_base_lr

        if not args.data:
            raise UserError("--base-lr auto runs the LR range test on the data: give --data DIR")
        overrides.pop("base_lr")
        rate, found = auto_base_lr(lambda: next(p for p in write() if p.name == "solver.prototxt"), out,
                                   f"{spec.name}: LR range test",
                                   seed=0)
        overrides["base_lr"] = str(rate)
        values.update(found)
    print(f"recipe {args.recipe}: " + ", ".join(f"{k} {v}" for k, v in values.items() if k != "recipe"))
    for path in write():
        print(path)
    return 0


def cmd_prototxt(args: argparse.Namespace) -> int:
    from squeezecaffe.netgen.emit import write_committed

    paths = write_committed(args.root)
    print(f"wrote {len(paths)} files under {Path(args.root) / 'prototxt'}")
    return 0


def cmd_draw(args: argparse.Namespace) -> int:
    from squeezecaffe.netgen.draw import draw_net

    net, data_shape = _load_net_or_model(args.model, args)
    print(draw_net(net, args.output, data_shape=data_shape))
    return 0


def cmd_build_lmdb(args: argparse.Namespace) -> int:
    from squeezecaffe.data_tools.convert import ConvertOptions, build_lmdb
    from squeezecaffe.data_tools.layouts import parse_limits
    from squeezecaffe.netgen.config import parse_hw

    if args.jobs is not None and args.jobs < 0:
        raise UserError(f"--jobs {args.jobs}: must be 0 (all cores) or more")
    options = ConvertOptions(
        resize=parse_hw(args.resize, "--resize") if args.resize else None, gray=args.gray, encoded=args.encoded,
        shuffle="none" if args.keep_order else "all" if args.shuffle else "train", seed=args.seed,
        jobs=args.jobs or 0, max_skip=args.max_skip, force=args.force,
        splits=tuple(args.splits.split(",")), progress=not args.quiet)
    manifest, results = build_lmdb(args.src, args.out, options, root=args.root, classes=args.classes,
                                   val_fraction=args.val_fraction, limits=parse_limits(args.limit))
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

    values, json_path = write_mean(args.db, args.output)
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
    from squeezecaffe.data_tools.fashion_mnist import export_pngs, is_exported

    reused = is_exported(Path(args.out)) and not args.force
    info = export_pngs(args.out, args.src, jobs=args.jobs or 0, force=args.force)
    state = "already there" if reused else "wrote"
    print(f"{state}: {args.out} (train {info['train']}, test {info['test']} PNG images in 10 class folders; "
          f"names in words.txt)")
    return 0


def cmd_default_data(args: argparse.Namespace) -> int:
    from squeezecaffe.data_tools.default_data import ensure_default_data

    out, reused = ensure_default_data(args.out, args.src, quiet=args.quiet)
    print(f"default dataset (Fashion-MNIST, 10 classes, 28x28 gray) {'already built' if reused else 'built'}: {out}")
    return 0


def _register_data_verbs(sub: argparse._SubParsersAction) -> None:
    from squeezecaffe.data_tools.fashion_mnist import DEFAULT_SOURCE

    p = sub.add_parser("build-lmdb", help="image folders / list files -> Caffe LMDBs + mean + labels + manifest")
    p.add_argument("src", help="Tiny ImageNet root, class-folder root, a list file, or a folder with train.txt/val.txt")
    p.add_argument("out", help="output data directory (train_lmdb/, val_lmdb/, mean.binaryproto, labels.txt, ...)")
    p.add_argument("--resize", metavar="HxW", help="resize every image (bilinear), e.g. 64x64")
    p.add_argument("--gray", action="store_true", help="store 1-channel images")
    p.add_argument("--encoded", action="store_true", help="store the JPEG/PNG bytes instead of raw pixels")
    order = p.add_mutually_exclusive_group()
    order.add_argument("--keep-order", action="store_true",
                       help="keep the listing order (class by class, as convert_imageset without --shuffle); "
                            "by default the training split is shuffled, seeded by --seed")
    order.add_argument("--shuffle", action="store_true", help="shuffle every split, not only train")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle and of the --val-fraction/--limit draws")
    p.add_argument("--jobs", type=int, help="decoding processes (default: all cores)")
    p.add_argument("--max-skip", type=float, default=0.01, help="fail when more than this fraction is broken")
    p.add_argument("--force", action="store_true", help="replace existing databases in OUT")
    p.add_argument("--val-fraction", type=float, default=0.0,
                   help="hold out this fraction of train per class as val (where SRC has no val split)")
    p.add_argument("--limit", action="append", default=[], metavar="SPLIT=N",
                   help="keep a stratified, seeded subset of N images of SPLIT, e.g. train=20000 (repeatable)")
    p.add_argument("--root", help="folder the list file's paths are relative to (default: the list's folder)")
    p.add_argument("--classes", type=int, help="class count for list files (labels must be below it)")
    p.add_argument("--splits", default="train,val,test", help="which splits to build (default: all present)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_build_lmdb)

    p = sub.add_parser("import-fashion-mnist",
                       help="Fashion-MNIST IDX files -> OUT/{train,test}/<class>/*.png + words.txt")
    p.add_argument("out", help="output folder (reused when a finished export is already there)")
    p.add_argument("--src", default=str(DEFAULT_SOURCE),
                   help="folder of the four IDX(.gz) files (default: Debian's dataset-fashion-mnist)")
    p.add_argument("--jobs", type=int, help="writer processes (default: all cores)")
    p.add_argument("--force", action="store_true", help="replace OUT")
    p.set_defaults(func=cmd_import_fashion_mnist)

    p = sub.add_parser("default-data", help="build (or reuse) the built-in default dataset: Fashion-MNIST as LMDBs")
    p.add_argument("out", nargs="?", default="out/data/fashion-mnist", help="data directory (default %(default)s)")
    p.add_argument("--src", default=str(DEFAULT_SOURCE), help="folder of the Fashion-MNIST IDX files")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_default_data)

    p = sub.add_parser("mean", help="mean image of a database (.binaryproto as compute_image_mean) + per-channel JSON")
    p.add_argument("db")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=cmd_mean)

    p = sub.add_parser("inspect", help="count, shapes, label histogram and encoding of a database")
    p.add_argument("db")
    p.add_argument("--grid", help="save a labelled grid of sample images to this PNG")
    p.add_argument("--count", type=int, default=64, help="images in the grid")
    p.set_defaults(func=cmd_inspect)


Command = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="squeezecaffe", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"squeezecaffe {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)

    p = sub.add_parser("list", help="registered models with input, classes and parameter counts")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("summary", help="Table-1-style per-module table of a model or any prototxt")
    p.add_argument("model", help="registered model name or path to a .prototxt")
    _add_net_overrides(p)
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("gen", help="write train_val, deploy and solver prototxt for a model")
    p.add_argument("model")
    p.add_argument("--out", required=True, help="output directory")
    _add_net_overrides(p)
    p.add_argument("--recipe", default="default", help="default, paper or registry (see docs/training.md)")
    p.add_argument("--base-lr", help="a rate, or auto: run the LR range test on --data first (lr-find)")
    p.set_defaults(func=cmd_gen)

    p = sub.add_parser("prototxt", help="regenerate the committed prototxt/<model>/ files of every model")
    p.add_argument("--root", default=".", help="repository root (default: .)")
    p.set_defaults(func=cmd_prototxt)

    p = sub.add_parser("draw", help="draw a model's graph to PNG/SVG/PDF")
    p.add_argument("model", help="registered model name or path to a .prototxt")
    p.add_argument("-o", "--output", required=True, help="output image path (.png, .svg, .pdf)")
    _add_net_overrides(p)
    p.set_defaults(func=cmd_draw)

    _register_data_verbs(sub)
    from squeezecaffe.cli_caffe import register_caffe_verbs
    from squeezecaffe.cli_compress import register_compress_verbs
    from squeezecaffe.cli_deploy import register_deploy_verbs
    from squeezecaffe.cli_engine import register_engine_verbs, register_train_verbs
    from squeezecaffe.cli_export import register_export_verbs

    register_engine_verbs(sub)
    register_train_verbs(sub)
    register_deploy_verbs(sub)
    register_compress_verbs(sub)
    register_export_verbs(sub)
    register_caffe_verbs(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.run_verb = main  # verbs that run other verbs (the demo) call back through here
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"squeezecaffe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("squeezecaffe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
