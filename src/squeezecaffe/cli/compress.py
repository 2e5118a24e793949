"""Command-line verbs for Deep Compression: `compress` and `decompress`."""

from __future__ import annotations

import argparse
from pathlib import Path

from squeezecaffe.cli.common import add_dataclass_options, dataclass_values


def cmd_compress(args: argparse.Namespace) -> int:
    from squeezecaffe.compress.options import CompressOptions
    from squeezecaffe.compress.pipeline import compress

    options = CompressOptions(**dataclass_values(args, CompressOptions), progress=not args.quiet)
    out = Path(args.out) if args.out else Path(f"{Path(args.weights).resolve().name.removesuffix('.caffemodel')}"
                                               "-compressed")
    result = compress(args.weights, out, options, model=args.model, net=args.net)
    print(f"wrote {result.sqz}, {result.caffemodel}, {result.table}, {result.report}")
    return 0


def cmd_decompress(args: argparse.Namespace) -> int:
    from squeezecaffe.compress.sqz import decompress

    path, deploy = decompress(args.sqz, args.output, args.deploy)
    print(f"wrote {path}" + (f" and {deploy}" if deploy else ""))
    return 0


def register_compress_verbs(sub: argparse._SubParsersAction) -> None:
    from squeezecaffe.compress.options import CompressOptions

    p = sub.add_parser("compress", help="Deep Compression of a trained model: prune, retrain, quantize, fine-tune, "
                                        "Huffman-code into a .sqz (a stage per folder, a per-layer size table)")
    p.add_argument("weights", help="a run directory (its best.caffemodel) or a .caffemodel")
    p.add_argument("--model", help="registered model the weights belong to (needed for a bare .caffemodel)")
    p.add_argument("--net", help="deploy.prototxt the weights belong to (instead of --model; no retraining)")
    p.add_argument("--out", help="output folder (default: <weights>-compressed)")
    add_dataclass_options(p, CompressOptions)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("decompress", help="a .sqz -> a dense .caffemodel (what Caffe, OpenCV dnn and our engine load)")
    p.add_argument("sqz")
    p.add_argument("-o", "--output", required=True, help="the .caffemodel to write")
    p.add_argument("--deploy", help="also write the deploy.prototxt the container carries to this path")
    p.set_defaults(func=cmd_decompress)
