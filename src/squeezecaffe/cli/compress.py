"""Command-line verbs for Deep Compression: `compress` and `decompress`."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_compress(args: argparse.Namespace) -> int:
    from squeezecaffe.compress.pipeline import CompressOptions, compress

    options = CompressOptions(density=args.density, bits=args.bits, index_bits=args.index_bits,
                              retrain_epochs=args.retrain_epochs, retrain_lr=args.retrain_lr,
                              centroid_gradient=args.centroid_gradient, data=args.data, split=args.split,
                              device=args.device, seed=args.seed, batch_size=args.batch_size, force=args.force,
                              progress=not args.quiet)
    out = Path(args.out) if args.out else Path(f"{Path(args.weights).resolve().name.removesuffix('.caffemodel')}"
                                               "-compressed")
    result = compress(args.weights, out, options, model=args.model, net=args.net)
    print(f"wrote {result.sqz}, {result.caffemodel}, {result.table}, {result.report}")
    return 0


def cmd_decompress(args: argparse.Namespace) -> int:
    from squeezecaffe.compress.pipeline import decompress

    path, deploy = decompress(args.sqz, args.output, args.deploy)
    print(f"wrote {path}" + (f" and {deploy}" if deploy else ""))
    return 0


def register_compress_verbs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="Deep Compression of a trained model: prune, retrain, quantize, fine-tune, "
                                        "Huffman-code into a .sqz (a stage per folder, a per-layer size table)")
    p.add_argument("weights", help="a run directory (its best.caffemodel) or a .caffemodel")
    p.add_argument("--model", help="registered model the weights belong to (needed for a bare .caffemodel)")
    p.add_argument("--net", help="deploy.prototxt the weights belong to (instead of --model; no retraining)")
    p.add_argument("--data", help="build-lmdb directory to retrain and evaluate on (default: the run's)")
    p.add_argument("--split", help="split evaluated at each stage (default: test, else val)")
    p.add_argument("--out", help="output folder (default: <weights>-compressed)")
    p.add_argument("--density", default="auto",
                   help="fraction of weights kept: auto (by role, default), paper (SqueezeNet v1.0's Table 1), a "
                        "number, PATTERN=D,... or a file of 'PATTERN D' lines")
    p.add_argument("--bits", default="6", help="cluster-index bits: 6 (default), or by kind/pattern, e.g. conv=8,fc=5")
    p.add_argument("--index-bits", default="conv=8,fc=5",
                   help="bound of the relative position of the next kept weight (default conv=8,fc=5, the paper's)")
    p.add_argument("--retrain-epochs", type=int, default=1,
                   help="epochs of retraining after pruning and of fine-tuning after quantization (0: none)")
    p.add_argument("--retrain-lr", type=float, help="base_lr of both retraining runs (default: 0.1 x the run's)")
    p.add_argument("--centroid-gradient", default="mean",
                   help="a shared value's gradient: mean (default) or sum of its weights' gradients")
    p.add_argument("--batch-size", type=int, help="retraining batch (default: the run's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--force", action="store_true", help="replace an earlier compression in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("decompress", help="a .sqz -> a dense .caffemodel (what Caffe, OpenCV dnn and our engine load)")
    p.add_argument("sqz")
    p.add_argument("-o", "--output", required=True, help="the .caffemodel to write")
    p.add_argument("--deploy", help="also write the deploy.prototxt the container carries to this path")
    p.set_defaults(func=cmd_decompress)
