"""Compression benchmark: Deep Compression's size accounting against the SqueezeNet paper, and trained models.

1. SqueezeNet v1.0 with weights from its own fillers, `--density paper` at 6 and 8 bits, no retraining: the kept
   parameters and the stored .sqz size beside the paper's 421,098 parameters and 0.47 / 0.66 MiB.
2. Each trained run given (e.g. the demo's fullbypass8): `squeezecaffe compress RUN` with the given options, then
   the dense and final top-1 on the **test** split (no snapshot choice has seen it: retraining keeps its best
   validation epoch) and the file sizes, from the verb's report.json.
3. Each image folder given with --set (ROOT with train/ and test/ class folders, e.g. a small real set): first
   `build-lmdb ROOT` and `train MODEL --engine torch --epochs E` as a user types them, then as in 2.

    python bench/compression.py [--run out/demo/runs/fullbypass8-short ...] [--run "RUN --bits 5" ...]
                                [--set ROOT ...] [--set-epochs 6] [--gray] [--no-paper]
                                [--retrain-epochs N] [--density auto] [--bits 6] [--out out/bench_compression]
                                [--json bench/results/compression.json]

A --run value may carry compress options after the run directory; they come after (and so override) the
common --density/--bits/--retrain-epochs. With no --density/--bits/--retrain-epochs the verb's defaults apply:
the figures are what `squeezecaffe compress RUN` gives.

Everything goes through the verbs, so the figures are what a user gets. A model with a run directory but
no trained weights is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from _results import write_results
from _verbs import run_verb

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
    from squeezecaffe.netgen.registry import get_model
    from squeezecaffe.solvers.settings import resolve

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
    p.add_argument("--density", help="compress --density (default: the verb's, auto)")
    p.add_argument("--bits", help="compress --bits (default: the verb's, 6)")
    p.add_argument("--set", action="append", default=[], help="an image folder with train/ and test/ to build, "
                                                               "train and compress (repeatable)")
    p.add_argument("--set-epochs", type=int, default=6, help="training epochs of a --set model")
    p.add_argument("--model", default="fullbypass8", help="the model trained on a --set folder")
    p.add_argument("--gray", action="store_true", help="build-lmdb --gray for the --set folders")
    p.add_argument("--no-paper", action="store_true", help="leave out the paper's accounting (section 1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="out/bench_compression")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figures: dict = {"paper_accounting": [], "runs": []}
    for bits in () if args.no_paper else (6, 8):
        weights = random_squeezenet(out / "squeezenet_v1_0-fillers.caffemodel")
        for index_bits in ("conv=8,fc=5", "4", "5"):
            folder = out / f"squeezenet_v1_0-paper-{bits}bit-index{index_bits.split(',')[0].replace('conv=', '')}"
            step("compress", str(weights), "--model", "squeezenet_v1_0", "--density", "paper", "--bits", str(bits),
                 "--index-bits", index_bits, "--retrain-epochs", "0", "--out", str(folder), "--force", "--quiet")
            report = json.loads((folder / "final" / "report.json").read_text())
            total = report["rows"][-1]
            figures["paper_accounting"].append({"bits": bits, "index_bits": index_bits, "kept": total["nonzeros"],
                                                "paper_kept": 421_098, "sqz_bytes": report["sqz_bytes"],
                                                "mib": report["sqz_bytes"] / 2**20,
                                                "fixed_mib": total["bytes_fixed"] / 2**20, "paper_mib": PAPER[bits],
                                                "sqz_over_paper": report["sqz_bytes"] / 2**20 / PAPER[bits],
                                                "fixed_over_paper": total["bytes_fixed"] / 2**20 / PAPER[bits]})
    runs = list(args.run)
    for root in args.set:
        name = Path(root).name
        db, run = out / f"{name}-db", out / f"{name}-{args.model}"
        run_verb(["build-lmdb", root, str(db), *(["--gray"] if args.gray else []), "--force", "--quiet"])
        if run.exists():
            shutil.rmtree(run)
        run_verb(["train", args.model, "--data", str(db), "--epochs", str(args.set_epochs), "--engine", "torch",
                  "--device", args.device, "--run-dir", str(run), "--quiet"])
        runs.append(str(run))
    for run in runs:
        run, *extra = run.split()
        run_dir = Path(run)
        if not (run_dir / "best.caffemodel").is_file():
            print(f"note: {run_dir} has no best.caffemodel; skipped")
            continue
        folder = out / f"{run_dir.name}-compressed"
        t0 = time.perf_counter()
        common = [*(["--retrain-epochs", args.retrain_epochs] if args.retrain_epochs else []),
                  *(["--density", args.density] if args.density else []), *(["--bits", args.bits] if args.bits else [])]
        step("compress", str(run_dir), *common, "--split", "test", "--device", args.device, "--out", str(folder),
             "--force", "--quiet", *extra)
        report = json.loads((folder / "final" / "report.json").read_text())
        stages = {s["name"]: s for s in report["stages"]}
        dense, final = stages["dense"]["top1"], report["stages"][-1]["top1"]
        figures["runs"].append({"run": str(run_dir), "options": " ".join([*common, *extra]),
                                "dense_bytes": report["source_bytes"], "sqz_bytes": report["sqz_bytes"],
                                "ratio": report["ratio"], "split": "test", "dense_top1": dense, "final_top1": final,
                                "loss_points": 100 * (dense - final), "notes": report["notes"],
                                "stages": [{k: s[k] for k in ("name", "top1", "top5")} for s in report["stages"]],
                                "seconds": time.perf_counter() - t0})

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
        print("\nTrained runs (compress options beyond the defaults in the second column), test split:\n")
        print("| run | options | caffemodel bytes | .sqz bytes | smaller | test top-1 dense | test top-1 final | "
              "loss (points) | time |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for f in figures["runs"]:
            print(f"| {Path(f['run']).name} | {f['options'] or 'defaults'} | {f['dense_bytes']:,} | "
                  f"{f['sqz_bytes']:,} | {f['ratio']:.1f}x | {100 * f['dense_top1']:.2f}% | "
                  f"{100 * f['final_top1']:.2f}% | {f['loss_points']:.2f} | {f['seconds']:.0f} s |")
    write_results(args.json, figures, runs=1, device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
