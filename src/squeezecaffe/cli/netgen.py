"""`squeezecaffe list|summary|gen|prototxt|draw`: the verbs over the model registry and generated prototxt."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from squeezecaffe.cli.common import (
    add_dataclass_options,
    add_schedule_choices,
    add_variant_options,
    freeze_list,
    is_model_name,
    parse_overrides,
    variant_target,
)
from squeezecaffe.errors import UserError


def _add_net_overrides(p: argparse.ArgumentParser) -> None:
    from squeezecaffe.solvers.request import GenerationRequest

    add_dataclass_options(p, GenerationRequest, only=("classes", "input", "batch_size", "test_batch_size",
                                                       "train_size", "val_size", "epochs", "data", "mean_file"))
    add_variant_options(p)
    p.add_argument("--solver-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any SolverParameter field, e.g. base_lr=0.01 (repeatable)")


def _resolve_from_args(args: argparse.Namespace, spec):
    from squeezecaffe.netgen.config import parse_hw
    from squeezecaffe.solvers.settings import resolve

    return resolve(
        spec, classes=args.classes, input_size=parse_hw(args.input) if args.input else None,
        batch_size=args.batch_size, test_batch_size=args.test_batch_size, train_size=args.train_size,
        val_size=args.val_size, epochs=args.epochs, data_dir=args.data, use_mean_file=args.mean_file)


def _load_net_or_model(target: str, args: argparse.Namespace):
    """A registered model name (its deploy net) or a path to any prototxt; returns (net, data_shape)."""
    from squeezecaffe.netgen.variants import model_spec
    from squeezecaffe.proto import pb, read_text

    if is_model_name(target):
        from squeezecaffe.netgen.builder import build_deploy

        spec = model_spec(variant_target(target, args))
        cfg, _ = _resolve_from_args(args, spec)
        return build_deploy(spec, cfg), None
    from squeezecaffe.caffe_rules.checks import check_net
    from squeezecaffe.netgen.config import parse_hw

    net = read_text(target, pb.NetParameter)
    check_net(net, target)
    data_shape = None
    if getattr(args, "input", None):
        h, w = parse_hw(args.input)
        data_shape = (1, 3, h, w)
    return net, data_shape


def cmd_list(args: argparse.Namespace) -> int:
    from squeezecaffe.netgen.builder import build_deploy
    from squeezecaffe.netgen.registry import MODELS, SOURCES
    from squeezecaffe.netgen.summary import summarize
    from squeezecaffe.solvers.settings import resolve

    print(f"{'model':22s} {'input':>9s} {'classes':>7s} {'weights':>11s} {'trainable':>11s}  "
          f"{'published':64s}  description")
    sources = set()
    for spec in MODELS.values():
        cfg, _ = resolve(spec)
        s = summarize(build_deploy(spec, cfg))
        h, w = cfg.input_size
        published = spec.published.describe() if spec.published else ""
        if published:
            sources.add(spec.published.source)
        print(f"{spec.name:22s} {f'{h}x{w}x3':>9s} {cfg.classes:7d} {s.weights:11,} {s.trainable:11,}  "
              f"{published or '-':64s}  {spec.description}")
    print("\npublished figures as their sources state them: " + "; ".join(SOURCES[k] for k in sorted(sources)))
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from squeezecaffe.netgen.summary import format_summary, summarize

    net, data_shape = _load_net_or_model(args.model, args)
    print(format_summary(summarize(net, data_shape, where=args.model)))
    return 0


def cmd_gen(args: argparse.Namespace) -> int:
    from squeezecaffe.solvers.request import GenerationRequest, generate_run

    overrides = parse_overrides(args.solver_set)
    if args.base_lr is not None:
        overrides["base_lr"] = args.base_lr
    request = GenerationRequest(
        model=variant_target(args.model, args), data=args.data, recipe=args.recipe, input=args.input,
        classes=args.classes, batch_size=args.batch_size, test_batch_size=args.test_batch_size,
        train_size=args.train_size, val_size=args.val_size, epochs=args.epochs, normalize=args.normalize,
        mean_file=args.mean_file, freeze=tuple(freeze_list(args)), solver_set=overrides)

    def find_rate(write_nets):
        from squeezecaffe.train.lr_find import auto_base_lr

        return auto_base_lr(write_nets, Path(args.out), f"{request.model}: LR range test", seed=0)

    run = generate_run(request, Path(args.out), find_rate=find_rate)
    shown = {k: v for k, v in run.recipe.items() if k not in ("recipe", "frozen") and not k.startswith("solver_set.")}
    print(f"recipe {args.recipe}: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    for path in run.files:
        print(path)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from squeezecaffe.netgen.variants import FireDesign
    from squeezecaffe.solvers.sweep import AXES, format_table, sweep

    grid: dict[str, list[float]] = {}
    kinds = {f.name: type(f.default) for f in dataclasses.fields(FireDesign)}
    for key in AXES:
        kind = kinds[key]
        text = getattr(args, key)
        if text:
            try:
                grid[key] = [kind(v) for v in text.split(",")]
            except ValueError:
                raise UserError(f"--{key.replace('_', '-')} '{text}': expected {kind.__name__}s separated by commas"
                                ) from None
    if not grid:
        raise UserError("sweep: give at least one list, e.g. --sr 0.125,0.25,0.5 --pct3x3 0.5")
    points = sweep(args.model, grid, Path(args.out), recipe=args.recipe, data_dir=args.data)
    print(format_table(points), end="")
    print(f"wrote {len(points)} models and table.md/table.json under {args.out}")
    return 0


def cmd_prototxt(args: argparse.Namespace) -> int:
    from squeezecaffe.solvers.generate import write_committed

    paths = write_committed(args.root)
    print(f"wrote {len(paths)} files under {Path(args.root) / 'prototxt'}")
    return 0


def cmd_draw(args: argparse.Namespace) -> int:
    from squeezecaffe.netgen.draw import draw_net

    net, data_shape = _load_net_or_model(args.model, args)
    print(draw_net(net, args.output, data_shape=data_shape))
    return 0


def register_netgen_verbs(sub: argparse._SubParsersAction) -> None:
    from squeezecaffe.netgen.variants import FireDesign
    from squeezecaffe.solvers.request import GenerationRequest

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
    add_dataclass_options(p, GenerationRequest, only=("recipe", "normalize"))
    add_schedule_choices(p)
    p.set_defaults(func=cmd_gen)

    p = sub.add_parser("sweep", help="generate a grid of the Fire design space (SR, pct3x3, base_e, incr_e, freq) "
                                     "with a table of parameters, MB and MFLOPs per point")
    p.add_argument("model", help="a model whose Fires follow the design space (e.g. squeezenet_v1_0)")
    p.add_argument("-o", "--out", required=True, help="output directory: one folder per point + table.md/json")
    for f in dataclasses.fields(FireDesign):
        p.add_argument(f"--{f.name.replace('_', '-')}", help=f"{f.metadata['help']}: values, comma-separated "
                                                           f"(v1.0: {f.default:g})")
    add_dataclass_options(p, GenerationRequest, only=("recipe", "data"))
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("prototxt", help="regenerate the committed prototxt/<model>/ files of every model")
    p.add_argument("--root", default=".", help="repository root (default: .)")
    p.set_defaults(func=cmd_prototxt)

    p = sub.add_parser("draw", help="draw a model's graph to PNG/SVG/PDF")
    p.add_argument("model", help="registered model name or path to a .prototxt")
    p.add_argument("-o", "--output", required=True, help="output image path (.png, .svg, .pdf)")
    _add_net_overrides(p)
    p.set_defaults(func=cmd_draw)

