"""Command-line verb for deployment beyond Caffe: `export` (ONNX)."""

from __future__ import annotations

import argparse


def cmd_export(args: argparse.Namespace) -> int:
    from squeezecaffe.errors import UserError
    from squeezecaffe.export.onnx_export import ExportOptions, export_onnx

    if not args.tolerance > 0:
        raise UserError(f"--tolerance {args.tolerance:g}: must be positive")

    options = ExportOptions(opset=args.opset, dynamic_batch=args.dynamic_batch, fold_batchnorm=args.fold_batchnorm,
                            bake_transform=args.bake_transform, tolerance=args.tolerance, data=args.data)
    report = export_onnx(args.weights, args.onnx, options, net=args.net, model=args.model)
    ops = ", ".join(f"{op} x{n}" for op, n in sorted(report.ops.items()))
    print(f"wrote {report.path} ({report.bytes:,} bytes, opset {args.opset}"
          f"{', dynamic batch' if args.dynamic_batch else ''}"
          f"{f', {report.folded} BatchNorm folded' if args.fold_batchnorm else ''}"
          f"{', mean/scale baked in' if args.bake_transform else ''})")
    print(f"ops: {ops}")
    print(f"checked: onnx.checker passed; onnxruntime vs our engine on {report.checked_on}: max probability "
          f"difference {report.max_difference:.2e}, logits {report.logits_difference:.2e} of their scale "
          f"(limit {args.tolerance:g} each)")
    return 0


def register_export_verbs(sub: argparse._SubParsersAction) -> None:
    from squeezecaffe.export.onnx_export import TOLERANCE
    from squeezecaffe.export.onnx_graph import DEFAULT_OPSET

    p = sub.add_parser("export", help="a trained model -> ONNX, checked and run in onnxruntime against our engine")
    p.add_argument("weights", help="a run directory (its best.caffemodel), a .caffemodel or a .sqz")
    p.add_argument("--onnx", required=True, help="the .onnx file to write")
    p.add_argument("--net", help="deploy.prototxt the weights belong to")
    p.add_argument("--model", help="registered model whose deploy net the weights belong to")
    p.add_argument("--data", help="data directory for labels, mean and the check images (default: the run's)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default %(default)s, at least 13)")
    p.add_argument("--dynamic-batch", action="store_true", help="a free batch dimension (default: the deploy's)")
    p.add_argument("--fold-batchnorm", action="store_true",
                   help="fold BatchNorm (and its Scale) into the convolution before it")
    p.add_argument("--bake-transform", action="store_true",
                   help="put the mean subtraction and scale in the graph: it takes BGR pixel values 0-255")
    p.add_argument("--tolerance", type=float, default=TOLERANCE,
                   help="largest probability difference to our engine accepted (default %(default)g)")
    p.set_defaults(func=cmd_export)
