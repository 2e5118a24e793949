"""ONNX export of every registry model: the ops each graph uses and onnxruntime's distance to our engine.

Each model's deploy net gets weights from its own fillers (seed 0; BatchNorm statistics as a trained net has
them: mean 0, variance 1, factor 1) and goes through `squeezecaffe export` (plain, and with --fold-batchnorm),
whose built-in check runs 16 seeded random inputs in onnxruntime and in our engine. Prints one table row per
model (and JSON with --json).

    python bench/onnx_export.py [--out out/bench_onnx] [--json out.json] [--models a,b]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _results import write_results


def filled_caffemodel(name: str, folder: Path) -> tuple[Path, Path]:
    import torch

    from squeezecaffe.engines.torchcaffe.fillers import fill_net
    from squeezecaffe.engines.torchcaffe.net import CaffeNet
    from squeezecaffe.engines.torchcaffe.weights import save_caffemodel
    from squeezecaffe.netgen.builder import build_deploy
    from squeezecaffe.netgen.registry import get_model
    from squeezecaffe.proto import write_text
    from squeezecaffe.solvers.settings import resolve

    spec = get_model(name)
    deploy = build_deploy(spec, resolve(spec)[0])
    net = CaffeNet(deploy, "TEST")
    fill_net(net, 0)
    with torch.no_grad():
        for lp, module in zip(net.filtered.layer, net.layers, strict=True):
            if lp.type == "BatchNorm":
                module.blobs[0].zero_()
                module.blobs[1].fill_(1.0)
                module.blobs[2].fill_(1.0)
    return save_caffemodel(net, folder / f"{name}.caffemodel"), write_text(folder / f"{name}.deploy.prototxt", deploy)


def main() -> int:
    from squeezecaffe.export.onnx_export import ExportOptions, export_onnx
    from squeezecaffe.netgen.registry import MODELS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--out", default="out/bench_onnx")
    p.add_argument("--json")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models.split(","):
        weights, deploy = filled_caffemodel(name, out)
        row = {"model": name}
        for fold in (False, True):
            t0 = time.perf_counter()
            report = export_onnx(str(weights), out / f"{name}{'-folded' if fold else ''}.onnx",
                                 ExportOptions(fold_batchnorm=fold), net=str(deploy))
            key = "folded" if fold else "plain"
            row[key] = {"ops": report.ops, "max_difference": report.max_difference,
                        "logits_difference": report.logits_difference, "bytes": report.bytes,
                        "folded": report.folded, "seconds": time.perf_counter() - t0}
        rows.append(row)
        print(f"{name}: {row['plain']['logits_difference']:.2e} / folded {row['folded']['logits_difference']:.2e}",
              flush=True)
    print("\n| model | ops (plain export) | probabilities | logits (of their scale) | folded BatchNorms | "
          "folded: probabilities | folded: logits |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        ops = ", ".join(f"{op} {n}" for op, n in sorted(r["plain"]["ops"].items()))
        print(f"| {r['model']} | {ops} | {r['plain']['max_difference']:.1e} | {r['plain']['logits_difference']:.1e} | "
              f"{r['folded']['folded']} | {r['folded']['max_difference']:.1e} | {r['folded']['logits_difference']:.1e} |")
    if args.json:
        write_results(args.json, {"rows": rows}, runs=1)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
