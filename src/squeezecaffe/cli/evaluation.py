"""Command-line verbs for trained models: `eval`, `classify` and `report`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from squeezecaffe.cli.common import add_dataclass_options, add_device_options


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("weights", help="a run directory (its best.caffemodel), a .caffemodel, a .sqz (compress) or an "
                                   ".onnx (export; runs in onnxruntime)")
    from squeezecaffe.evaluation.options import EvalOptions

    add_dataclass_options(p, EvalOptions, only=("net", "model", "engine", "mean_value", "batch_size"))
    add_device_options(p, only=("device",))  # the torch engine's


def _prepare(args: argparse.Namespace, data: str | None, out_dir: Path | None):
    from squeezecaffe.errors import UserError
    from squeezecaffe.evaluation.evaluate import prepare

    if args.batch_size <= 0:
        raise UserError(f"--batch-size {args.batch_size}: must be positive")
    weights, carried = args.weights, None
    if weights.endswith(".onnx"):
        from squeezecaffe.export.onnx_export import open_onnx

        if args.engine not in ("torch", "onnxruntime"):
            raise UserError(f"--engine {args.engine}: an .onnx file runs in onnxruntime")
        args.engine = "onnxruntime"
        carried = open_onnx(weights)
    elif weights.endswith(".sqz"):
        from squeezecaffe.compress.sqz import open_sqz

        weights, carried = open_sqz(weights)
    prepared = prepare(weights, net=args.net, model=args.model, data=data, mean_value=args.mean_value,
                       out_dir=out_dir, carried=carried, engine=args.engine, device=args.device)
    for note in prepared[0].notes:
        print(f"note: {note}", file=sys.stderr)
    return prepared


def cmd_eval(args: argparse.Namespace) -> int:
    from squeezecaffe.evaluation.evaluate import evaluate_weights, format_eval

    out_dir = Path(args.out) if args.out else None
    prepared = _prepare(args, args.data, out_dir)
    result = evaluate_weights(args.weights, args.split, data=args.data, out_dir=out_dir, batch_size=args.batch_size,
                              errors_shown=args.errors, progress=not args.quiet, prepared=prepared,
                              engine=args.engine, max_skip=args.max_skip)
    print(format_eval(result))
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from squeezecaffe.errors import UserError
    from squeezecaffe.evaluation.classify import classify_files, expand_inputs, format_prediction, write_predictions

    if args.top <= 0:
        raise UserError(f"--top {args.top}: must be positive")
    art, pre, runtime = _prepare(args, args.data, None)
    files = expand_inputs(args.images)
    if not files:
        raise UserError(f"no images found in {' '.join(args.images)}")
    predictions, failures = classify_files(runtime, pre, art.labels, files, args.top, args.batch_size)
    for pred in predictions:
        print(format_prediction(pred))
    for _, message in failures:
        print(f"squeezecaffe: error: {message}", file=sys.stderr)
    if args.predictions:
        print(f"wrote {write_predictions(args.predictions, predictions)} ({len(predictions)} lines)")
    if failures:
        print(f"squeezecaffe: {len(failures)} of {len(files)} files could not be classified", file=sys.stderr)
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from squeezecaffe.fileio import atomic_write_text
    from squeezecaffe.train.plots import plot_runs
    from squeezecaffe.train.report import markdown_table, run_row

    runs = [Path(r) for r in args.runs]
    table = markdown_table([run_row(r) for r in runs])
    print(table)
    if args.output:
        atomic_write_text(args.output, table + "\n")
        print(f"\nwrote {args.output}")
    curves = Path(args.curves) if args.curves else (Path(args.output).with_suffix(".png") if args.output
                                                    else Path("report_curves.png"))
    print(f"curves: {plot_runs(runs, curves)}")
    return 0


DEMO_DEVICE_OPTIONS = ("device", "amp", "gpu_transform", "data_in_memory")  # channels-last is always on


def cmd_demo(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from squeezecaffe.demo import DEMO_DEVICE, FULL, SHORT, run_demo

    schedule = FULL if args.full else SHORT
    overrides = {k: v for k, v in (("epochs", args.epochs), ("train_images", args.train_images),
                                   ("val_images", args.val_images), ("batch_size", args.batch_size)) if v is not None}
    if overrides:
        schedule = replace(schedule, name=f"{schedule.name}-custom", **overrides)
    device = replace(DEMO_DEVICE, **{name: getattr(args, name) for name in DEMO_DEVICE_OPTIONS})
    run_demo(Path(args.out), schedule, src=args.src, model=args.model, device=device, quiet=args.quiet)
    return 0


def register_evaluation_verbs(sub: argparse._SubParsersAction) -> None:
    from squeezecaffe.data_tools.mnist import DEFAULT_SOURCE
    from squeezecaffe.demo import DEMO_MODEL
    from squeezecaffe.evaluation.options import EvalOptions

    p = sub.add_parser("eval", help="top-1/top-5/loss, per-class accuracy, confusion matrix and error grid of a "
                                    "trained model over a whole database or image folder")
    _add_model_options(p)
    p.add_argument("--data", help="build-lmdb directory, an LMDB, or an image folder (default: the run's data)")
    p.add_argument("--split", help="split of a data directory or folder (default: test, else val)")
    p.add_argument("--out", help="output folder (default RUN/eval/<split>[-engine])")
    add_dataclass_options(p, EvalOptions, only=("errors", "max_skip"))
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("classify", help="top-k labels of image files or folders (JPEG/PNG/BMP)")
    _add_model_options(p)
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--data", help="build-lmdb directory for labels, mean and stored size (default: the run's)")
    add_dataclass_options(p, EvalOptions, only=("top",))
    p.add_argument("--predictions", help="write '<file name> <class id>' per image (Tiny ImageNet submission)")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("report", help="Table-3-style Markdown comparison of runs + overlaid training curves")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("-o", "--output", help="also write the table to this Markdown file")
    p.add_argument("--curves", help="PNG of overlaid curves (default: beside -o, else report_curves.png)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="Fashion-MNIST end to end: import, build-lmdb, train, eval, report")
    p.add_argument("--out", default="out/demo", help="working folder (default out/demo)")
    p.add_argument("--full", action="store_true", help="the full schedule (all training images, 20 epochs)")
    p.add_argument("--src", default=str(DEFAULT_SOURCE), help="folder of the IDX files")
    p.add_argument("--model", default=DEMO_MODEL, help="registered model to train (default %(default)s)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--train-images", type=int, help="stratified training subset size")
    p.add_argument("--val-images", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_options(p, only=DEMO_DEVICE_OPTIONS)
    p.set_defaults(func=cmd_demo)
