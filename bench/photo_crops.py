"""Data a user brings, end to end: a messy folder of colour photos -> LMDB -> training -> eval -> compression.

The images are random square crops of the colour photographs scikit-image ships (astronaut, coffee, chelsea,
rocket, hubble_deep_field, immunohistochemistry, retina, logo): one class per photograph, crops of 24 px up to half
the photo, stored in every form `build-lmdb` must read (JPEG with an upper-case suffix, PNG with alpha, grayscale
JPEG, BMP, 16-bit PNG), some in sub-folders, class names with spaces, and one truncated JPEG per class. A second,
independently drawn set of crops is the test folder `eval` reads directly (its broken files skipped and listed).
Then, through the installed `squeezecaffe` command, as a user types it:

    squeezecaffe build-lmdb PHOTOS DATA --val-fraction 0.15 --resize 32x32 --max-skip 0.05
    squeezecaffe train fullbypass8 --data DATA --epochs E --engine ENGINE --run-dir RUN
    squeezecaffe eval RUN --data TEST_PHOTOS --max-skip 0.2
    squeezecaffe compress RUN [--retrain-epochs N] --out RUN-compressed-N       (one per --retrain value)
    squeezecaffe eval RUN-compressed-N/final/model.sqz --data TEST_PHOTOS --max-skip 0.2

    python bench/photo_crops.py [--out out/bench_photo_crops] [--per-class 260] [--epochs 8] [--engine torch]
                                [--retrain 1,10,default] [--json FILE]

Prints one table (and JSON): the dense model's val and test-folder top-1, then per compression setting the
retraining length it ran, the .sqz size, the final val top-1 (the split the retraining stages picked their
snapshots on) and the final test-folder top-1 (a split no choice has seen: the figure to quote). Needs
scikit-image (for its sample photographs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from _results import write_results
from _verbs import run_verb

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "logo")


def write_crops(root: Path, per_class: int, seed: int) -> int:
    """ROOT/<Name> photos/[sub/]img_<i>.<ext>: `per_class` crops of each photograph plus one broken JPEG."""
    try:
        import skimage.data
    except ImportError:
        sys.exit("bench/photo_crops.py needs scikit-image for its sample photographs: pip install scikit-image")
    rng = np.random.default_rng(seed)
    written = 0
    for name in PHOTOS:
        rgb = getattr(skimage.data, name)()
        folder = root / f"{name.split('_')[0].capitalize()} photos"
        (folder / "sub").mkdir(parents=True, exist_ok=True)
        h, w = rgb.shape[:2]
        for i in range(per_class):
            side = int(rng.integers(24, min(h, w) // 2))
            y, x = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
            crop = np.ascontiguousarray(rgb[y:y + side, x:x + side])
            bgr = cv2.cvtColor(crop, cv2.COLOR_RGBA2BGRA if crop.shape[2] == 4 else cv2.COLOR_RGB2BGR)
            place = folder / "sub" if i % 7 == 0 else folder
            form = i % 5
            if form == 0:
                cv2.imwrite(str(place / f"img {i}.JPG"), bgr[..., :3], [cv2.IMWRITE_JPEG_QUALITY, 85])
            elif form == 1:
                cv2.imwrite(str(place / f"img_{i}.png"), bgr)  # with alpha where the photograph has one
            elif form == 2:
                cv2.imwrite(str(place / f"img_{i}.jpeg"), cv2.cvtColor(bgr[..., :3], cv2.COLOR_BGR2GRAY))
            elif form == 3:
                cv2.imwrite(str(place / f"img_{i}.bmp"), bgr[..., :3])
            else:
                cv2.imwrite(str(place / f"img_{i}.png"), bgr[..., :3].astype(np.uint16) * 257)
            written += 1
        (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return written


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/bench_photo_crops")
    p.add_argument("--per-class", type=int, default=260, help="training crops per photograph")
    p.add_argument("--test-per-class", type=int, default=40)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--engine", default="torch")
    p.add_argument("--retrain", default="1,10,default", help="compress --retrain-epochs values ('default': none given)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args()
    out = Path(args.out)
    if out.exists():
        sys.exit(f"{out}: exists; give a new --out")
    figures: dict = {"crops": write_crops(out / "photos", args.per_class, seed=7),
                     "test_crops": write_crops(out / "test_photos", args.test_per_class, seed=99), "compress": []}
    run_verb(["build-lmdb", str(out / "photos"), str(out / "data"), "--val-fraction", "0.15", "--resize", "32x32",
              "--max-skip", "0.05"])
    run = out / "run"
    _, figures["train_seconds"] = run_verb(["train", "fullbypass8", "--data", str(out / "data"), "--epochs",
                                            str(args.epochs), "--engine", args.engine, "--run-dir", str(run),
                                            "--quiet"])
    run_verb(["eval", str(run), "--split", "val", "--quiet"])
    figures["val_top1"] = json.loads((run / "eval" / "val" / "metrics.json").read_text())["top1"]
    run_verb(["eval", str(run), "--data", str(out / "test_photos"), "--max-skip", "0.2", "--quiet"])
    test = json.loads((run / "eval" / "test_photos-train" / "metrics.json").read_text())
    figures.update(test_top1=test["top1"], test_count=test["count"], test_skipped=len(test["skipped"]))
    for setting in args.retrain.split(","):
        folder = out / f"compressed-{setting}"
        extra = [] if setting == "default" else ["--retrain-epochs", setting]
        said, seconds = run_verb(["compress", str(run), *extra, "--out", str(folder), "--quiet"])
        report = json.loads((folder / "final" / "report.json").read_text())
        length = next((line.split("stage: ", 1)[1].split(" (")[0] for line in said.splitlines()
                       if "each retraining stage" in line), "none")
        # the test folder: no snapshot choice saw it (each retraining stage keeps its best val epoch)
        scored = folder / "final" / "test_photos"
        run_verb(["eval", str(folder / "final" / "model.sqz"), "--data", str(out / "test_photos"), "--max-skip",
                  "0.2", "--out", str(scored), "--quiet"])
        figures["compress"].append({"retrain_epochs": setting, "length": length, "sqz_bytes": report["sqz_bytes"],
                                    "ratio": report["ratio"], "final_val_top1": report["stages"][-1]["top1"],
                                    "final_test_top1": json.loads((scored / "metrics.json").read_text())["top1"],
                                    "seconds": seconds})

    print(f"\nfullbypass8, {figures['crops']} training crops ({len(PHOTOS)} classes, 15% held out for val), "
          f"{args.epochs} epochs, {args.engine} engine ({figures['train_seconds']:.0f} s): val top-1 "
          f"{100 * figures['val_top1']:.2f}%, test folder {100 * figures['test_top1']:.2f}% "
          f"({figures['test_count']} images, {figures['test_skipped']} unreadable skipped)\n")
    print("| compress --retrain-epochs | each retraining stage | .sqz bytes | smaller | val top-1 | test folder top-1 "
          "| time |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for c in figures["compress"]:
        print(f"| {c['retrain_epochs']} | {c['length']} | {c['sqz_bytes']:,} | {c['ratio']:.1f}x | "
              f"{100 * c['final_val_top1']:.2f}% | {100 * c['final_test_top1']:.2f}% | {c['seconds']:.0f} s |")
    if args.json:
        write_results(args.json, figures, runs=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
