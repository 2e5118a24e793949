"""Command-line verbs of training runs: `train` (epoch by epoch, either engine), `lr-find` and `plot`."""

from __future__ import annotations

import argparse
from pathlib import Path

from squeezecaffe.cli.common import (
    add_dataclass_options,
    add_device_options,
    add_schedule_choices,
    add_variant_options,
    dataclass_values,
    device_options,
)


def cmd_train(args: argparse.Namespace) -> int:
    from squeezecaffe.train.config import TrainConfig
    from squeezecaffe.train.launch import launch, resume

    if args.resume:
        return resume(Path(args.resume), progress=not args.quiet)
    from squeezecaffe.cli.common import variant_target

    if args.model:
        args.model = variant_target(args.model, args)
    from squeezecaffe.cli.common import freeze_list, parse_overrides
    from squeezecaffe.train.guard import GuardOptions
    from squeezecaffe.train.plateau import PlateauOptions

    # built here, so bad controller and guard options are refused before anything is written
    plateau = PlateauOptions(**dataclass_values(args, PlateauOptions))
    guard = GuardOptions(**dataclass_values(args, GuardOptions, prefix="guard-"))
    solver_set = parse_overrides(args.solver_set)
    if args.base_lr is not None:
        solver_set["base_lr"] = args.base_lr
    cfg = TrainConfig(**dataclass_values(args, TrainConfig), device_options=device_options(args), model=args.model,
                      solver_set=solver_set, plateau=plateau, guard=guard, freeze=freeze_list(args))
    return launch(cfg, Path(args.run_dir) if args.run_dir else None, progress=not args.quiet)


def cmd_lr_find(args: argparse.Namespace) -> int:
    import json
    import tempfile

    from squeezecaffe.engines.device import DeviceOptions
    from squeezecaffe.fileio import atomic_write_text
    from squeezecaffe.train.config import TrainConfig
    from squeezecaffe.train.lr_find import find_lr, plot_sweep
    from squeezecaffe.train.prepare import generate_run_files

    cfg = TrainConfig(model=args.model, data=args.data, batch_size=args.batch_size, input=args.input,
                      recipe=args.recipe, device_options=DeviceOptions(device=args.device), workers=args.workers,
                      seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="lr-find-") as tmp:
        solver_path, _ = generate_run_files(cfg, Path(tmp))
        sweep = find_lr(solver_path, start=args.start, end=args.end, iterations=args.iterations, seed=args.seed,
                        device=args.device, workers=args.workers)
    out = Path(args.output or f"lr_find_{args.model}.png")
    plot_sweep(sweep, out, f"{args.model} on {Path(args.data).name}: LR range test")
    atomic_write_text(out.with_suffix(".json"), json.dumps({"rates": sweep.rates, "losses": sweep.losses,
                                                            "smoothed": sweep.smoothed, "suggestion": sweep.suggestion}))
    print(f"swept {len(sweep.rates)} iterations from {sweep.rates[0]:.3g} to {sweep.rates[-1]:.3g}; smoothed loss "
          f"lowest ({sweep.smoothed[sweep.best]:.4f}) at {sweep.rates[sweep.best]:.3g}")
    print(f"suggested base_lr: {sweep.suggestion:.3g}   (plot: {out}; use it with --base-lr, or --base-lr auto)")
    if sweep.best == len(sweep.smoothed) - 1:
        print(f"note: the loss was still falling at the end of the range; sweep further (--end {10 * args.end:g})")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from squeezecaffe.train.plots import plot_runs

    print(plot_runs([Path(r) for r in args.runs], Path(args.output)))
    return 0


def register_train_verbs(sub: argparse._SubParsersAction) -> None:
    from squeezecaffe.train.config import TrainConfig
    from squeezecaffe.train.guard import GuardOptions
    from squeezecaffe.train.lr_find import SWEEP
    from squeezecaffe.train.plateau import PlateauOptions

    p = sub.add_parser("train", help="train a model on a build-lmdb data directory, epoch by epoch, with the "
                                     "plateau LR controller, snapshots, resume, logs and plots")
    p.add_argument("model", nargs="?", help="registered model name or variant (or use --solver)")
    add_dataclass_options(p, TrainConfig)  # --data, --epochs, --batch-size, --engine, --seed, --bn-images, ...
    add_variant_options(p)
    p.add_argument("--run-dir", help="run directory (default runs/<model>-<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest complete snapshot")
    p.add_argument("--solver-set", action="append", default=[], metavar="KEY=VALUE")
    add_schedule_choices(p)
    add_dataclass_options(p.add_argument_group("plateau controller"), PlateauOptions)
    add_dataclass_options(p.add_argument_group("guard"), GuardOptions, prefix="guard-")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("lr-find", help="LR range test: loss vs an exponentially growing rate, and a suggested base_lr")
    p.add_argument("model", help="registered model name")
    p.add_argument("--data", required=True, help="data directory written by build-lmdb")
    add_dataclass_options(p, TrainConfig, only=("batch_size", "input", "recipe", "workers", "seed"))
    p.add_argument("--start", type=float, default=SWEEP.start, help="first rate (default %(default)g)")
    p.add_argument("--end", type=float, default=SWEEP.end, help="last rate (default %(default)g)")
    p.add_argument("--iterations", type=int, default=SWEEP.iterations, help="sweep length (default %(default)d)")
    add_device_options(p, only=("device",))
    p.add_argument("-o", "--output", help="the plot (default lr_find_MODEL.png; the figures beside it as .json)")
    p.set_defaults(func=cmd_lr_find)

    p = sub.add_parser("plot", help="training curves of one or several runs (overlaid) to a PNG")
    p.add_argument("runs", nargs="+")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=cmd_plot)
