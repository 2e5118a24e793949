"""Compression benchmark: Deep Compression's size accounting against the SqueezeNet paper, and trained models.

1. SqueezeNet v1.0 with weights from its own fillers, `--density paper` at 6 and 8 bits, no retraining: the kept
   parameters and the stored .sqz size beside the paper's 421,098 parameters and 0.47 / 0.66 MiB.
2. Each trained run given (e.g. the demo's fullbypass8): `squeezecaffe compress RUN` with the given density, bits
   and retraining, then the dense and final test top-1 and the file sizes, from the verb's report.json.

    python bench/compression.py [--run out/demo/runs/fullbypass8-short ...] [--run "RUN --bits 5" ...]
                                [--retrain-epochs N] [--density auto] [--bits 6] [--out out/bench_compression]
                                [--json out.json]

A --run value may carry compress options after the run directory; they come after (and so override) the
common --density/--bits/--retrain-epochs.

Everything goes through the `compress` verb, so the figures are what a user gets. A model with a run directory but
no trained weights is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from squeezecaffe.cli import main as cli

PAPER = {6: 0.47, 8: 0.66}  # MiB, the SqueezeNet paper (its 4.8 MB is 1,248,424 float32 values in MiB)


def step(*argv: str) -> None:
    print(f"$ squeezecaffe {' '.join(argv)}", flush=True)
    if cli(list(argv)) != 0:
        sys.exit(f"bench step failed: {' '.join(argv)}")


def random_squeezenet(path: Path) -> Path:
    """SqueezeNet v1.0's deploy net with weights drawn by its own fillers (seed 0), saved as a caffemodel."""
    from squeezecaffe.engines.torchcaffe.fillers import fill_net
    from squeezecaffe.engines.torchcaffe.net import CaffeNet
    from squeezecaffe.engines.torchcaffe.weights import save_caffemodel
    from squeezecaffe.netgen.builder import build_deploy
    from squeezecaffe.netgen.config import resolve
    from squeezecaffe.netgen.registry import get_model

    spec = get_model("squeezenet_v1_0")
    net = CaffeNet(build_deploy(spec, resolve(spec)[0]), "TEST")
    fill_net(net, 0)
    return save_caffemodel(net, path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", default=[],
                   help="a trained run directory to compress, optionally followed by compress options (repeatable)")
    p.add_argument("--retrain-epochs", help="epochs per retraining stage (default: the verb's: one, raised to reach "
                                            "500 iterations)")
    p.add_argument("--density", default="auto")
    p.add_argument("--bits", default="6")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="out/bench_compression")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figures: dict = {"paper_accounting": [], "runs": []}
    weights = random_squeezenet(out / "squeezenet_v1_0-fillers.caffemodel")
    for bits in (6, 8):
        for index_bits in ("conv=8,fc=5", "4", "5"):
            folder = out / f"squeezenet_v1_0-paper-{bits}bit-index{index_bits.split(',')[0].replace('conv=', '')}"
            step("compress", str(weights), "--model", "squeezenet_v1_0", "--density", "paper", "--bits", str(bits),
                 "--index-bits", index_bits, "--retrain-epochs", "0", "--out", str(folder), "--force", "--quiet")
            report = json.loads((folder / "final" / "report.json").read_text())
            total = report["rows"][-1]
            figures["paper_accounting"].append({"bits": bits, "index_bits": index_bits, "kept": total["nonzeros"],
                                                "paper_kept": 421_098, "sqz_bytes": report["sqz_bytes"],
                                                "mib": report["sqz_bytes"] / 2**20,
                                                "fixed_mib": total["bytes_fixed"] / 2**20, "paper_mib": PAPER[bits]})
    for run in args.run:
        run, *extra = run.split()
        run_dir = Path(run)
        if not (run_dir / "best.caffemodel").is_file():
            print(f"note: {run_dir} has no best.caffemodel; skipped")
            continue
        folder = out / f"{run_dir.name}-compressed"
        t0 = time.perf_counter()
        retrain = ["--retrain-epochs", args.retrain_epochs] if args.retrain_epochs else []
        step("compress", str(run_dir), *retrain, "--density", args.density, "--bits", args.bits,
             "--device", args.device, "--out", str(folder), "--force", "--quiet", *extra)
        report = json.loads((folder / "final" / "report.json").read_text())
        stages = {s["name"]: s for s in report["stages"]}
        dense, final = stages["dense"]["top1"], report["stages"][-1]["top1"]
        figures["runs"].append({"run": str(run_dir), "options": " ".join(extra), "dense_bytes": report["source_bytes"],
                                "sqz_bytes": report["sqz_bytes"], "ratio": report["ratio"], "dense_top1": dense,
                                "final_top1": final, "loss_points": 100 * (dense - final) if final is not None else None,
                                "stages": report["stages"], "seconds": time.perf_counter() - t0})

    print("\nSqueezeNet v1.0, --density paper, filler weights (no retraining):\n")
    print("| bits | index bits | kept (ours) | kept (paper) | .sqz bytes | MiB, Huffman (.sqz) | "
          "MiB, fixed-width codes | MiB (paper) | .sqz / paper | fixed / paper |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for f in figures["paper_accounting"]:
        print(f"| {f['bits']} | {f['index_bits']} | {f['kept']:,} | {f['paper_kept']:,} | {f['sqz_bytes']:,} | "
              f"{f['mib']:.3f} | "
              f"{f['fixed_mib']:.3f} | {f['paper_mib']} | {f['mib'] / f['paper_mib']:.2f} | "
              f"{f['fixed_mib'] / f['paper_mib']:.2f} |")
    if figures["runs"]:
        print(f"\nTrained runs, --density {args.density} --bits {args.bits} --retrain-epochs "
              f"{args.retrain_epochs or 'default'}:\n")
        print("| run | options | caffemodel bytes | .sqz bytes | ratio | test top-1 dense | test top-1 final | "
              "loss (points) | time |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for f in figures["runs"]:
            final = f"{100 * f['final_top1']:.2f}%" if f["final_top1"] is not None else "-"
            loss = f"{f['loss_points']:.2f}" if f["loss_points"] is not None else "-"
            print(f"| {Path(f['run']).name} | {f['options']} | {f['dense_bytes']:,} | {f['sqz_bytes']:,} | {f['ratio']:.1f}x | "
                  f"{100 * f['dense_top1']:.2f}% | {final} | {loss} | {f['seconds']:.0f} s |")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
