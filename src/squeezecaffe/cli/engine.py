"""Command-line verbs of the torch engine: `forward`, `time` and `solve`."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from squeezecaffe.cli.common import (
    add_device_options,
    device_options,
)
from squeezecaffe.errors import UserError


def _options(args: argparse.Namespace, workers: int = 0):
    from dataclasses import asdict

    from squeezecaffe.engines.torchcaffe.options import EngineOptions

    return EngineOptions(**asdict(device_options(args)), workers=workers)


def _read_input(spec: str):
    import numpy as np

    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise UserError(f"--input '{spec}': expected NAME=file.npy")
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except ValueError as exc:
        raise UserError(f"{path}: not a .npy array ({exc})") from None
    if not isinstance(arr, np.ndarray):
        raise UserError(f"{path}: holds several arrays; give one .npy per input")
    return name, arr


def _net_param(target: str, args: argparse.Namespace, deploy: bool):
    """(NetParameter, where, base_dir) for a registered model name or a prototxt path."""
    from squeezecaffe.cli.common import is_model_name
    from squeezecaffe.netgen.variants import model_spec
    from squeezecaffe.proto import pb, read_text

    if is_model_name(target):
        from squeezecaffe.netgen.builder import build_deploy, build_train_val
        from squeezecaffe.solvers.settings import resolve

        spec = model_spec(target)
        cfg, _ = resolve(spec, batch_size=getattr(args, "batch_size", None))
        return (build_deploy(spec, cfg) if deploy else build_train_val(spec, cfg)), target, None, cfg
    path = Path(target)
    return read_text(path, pb.NetParameter), str(path), path.parent, None


def cmd_forward(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from squeezecaffe.engines.torchcaffe.fillers import fill_net
    from squeezecaffe.engines.torchcaffe.net import CaffeNet, DataOptions
    from squeezecaffe.engines.torchcaffe.weights import load_caffemodel
    from squeezecaffe.fileio import atomic_write_bytes

    param, where, base_dir, _ = _net_param(args.net, args, deploy=True)
    inputs = dict(_read_input(s) for s in args.input)
    net = CaffeNet(param, args.phase, where=where, base_dir=base_dir, data=DataOptions(seed=args.seed),
                   input_shapes={k: tuple(v.shape) for k, v in inputs.items()})
    for name in inputs:
        if name not in net.input_shapes:
            raise UserError(f"--input {name}: the net has no input blob '{name}' (inputs: "
                            f"{', '.join(net.input_shapes) or 'none'})")
    fill_net(net, args.seed)
    if args.weights:
        report = load_caffemodel(net, args.weights)
        if report.missing:
            print(f"note: layers not in {args.weights} keep their fillers: {', '.join(report.missing)}")
    _options(args).apply(net)
    with torch.no_grad():
        result = net({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()})
    wanted = [b.strip() for b in args.blobs.split(",")] if args.blobs else list(result.blobs)
    missing = [b for b in wanted if b not in result.blobs]
    if missing:
        raise UserError(f"--blobs: no blob named {', '.join(missing)} (blobs: {', '.join(result.blobs)})")
    arrays = {name: result.blobs[name].detach().float().cpu().numpy() for name in wanted}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(args.output, buf.getvalue())
    for name, arr in arrays.items():
        shape = "x".join(map(str, arr.shape)) or "scalar"
        print(f"{name:32s} {shape:>16s}  mean {arr.mean():+.6g}  std {arr.std():.6g}")
    print(f"wrote {len(arrays)} blobs to {args.output}")
    return 0


def cmd_time(args: argparse.Namespace) -> int:
    import torch

    from squeezecaffe.caffe_rules.state import filter_net, make_state
    from squeezecaffe.engines.torchcaffe.fillers import fill_net
    from squeezecaffe.engines.torchcaffe.net import CaffeNet
    from squeezecaffe.engines.torchcaffe.timing import data_layers_as_inputs, format_report, time_net
    from squeezecaffe.netgen.config import parse_hw

    param, where, base_dir, cfg = _net_param(args.model, args, deploy=False)
    filtered = filter_net(param, make_state(args.phase))
    shapes: dict[str, tuple[int, ...]] = {}
    for lp in filtered.layer:
        if lp.type == "Data":
            batch = args.batch_size or lp.data_param.batch_size
            crop = lp.transform_param.crop_size
            if crop:
                h = w = crop
            elif args.input:
                h, w = parse_hw(args.input)
            elif cfg is not None:
                h, w = cfg.input_size
            else:
                raise UserError(f"{where}: layer '{lp.name}' takes its image size from the database; give --input HxW")
            shapes[lp.top[0]] = (batch, 3, h, w)
            if len(lp.top) > 1:
                shapes[lp.top[1]] = (batch,)
    param = data_layers_as_inputs(filtered, shapes)
    net = CaffeNet(param, args.phase, where=where, base_dir=base_dir)
    fill_net(net, 0)
    _options(args).apply(net)
    gen = torch.Generator().manual_seed(0)
    inputs = {}
    for name, shape in net.input_shapes.items():
        # images ~ N(0, 50) like mean-subtracted pixels; labels 0 are valid for any class count
        inputs[name] = torch.zeros(shape) if len(shape) == 1 else torch.randn(shape, generator=gen) * 50
    inputs = {k: net._prepare(v) for k, v in inputs.items()}
    print(format_report(time_net(net, inputs, args.iterations, per_layer=not args.no_layers)))
    return 0


def cmd_solve(args: argparse.Namespace) -> int:
    from squeezecaffe.engines.torchcaffe.solver import Solver

    solver = Solver.from_file(args.solver, options=_options(args, args.workers))
    if args.weights and args.snapshot:
        raise UserError("give --weights or --snapshot, not both")
    if args.weights:
        solver.load_weights(args.weights)
    if args.snapshot:
        solver.restore(args.snapshot)
        print(f"restored {args.snapshot} at iteration {solver.iter}")
    display = solver.sp.display

    def on_iteration(stats) -> None:
        if display and (stats.iter - 1) % display == 0:
            from squeezecaffe.engines.torchcaffe.solver import read_scalars

            loss, *values = read_scalars([stats.loss, *stats.outputs.values()])  # the one wait for the device
            outs = ", ".join(f"{k} = {v:.6g}" for k, v in zip(stats.outputs, values, strict=True))
            print(f"Iteration {stats.iter - 1}, loss = {loss:.6g}, lr = {stats.lr:.6g}; {outs}", flush=True)

    def on_test(it: int, results) -> None:
        for i, res in enumerate(results):
            print(f"Iteration {it}, Testing net (#{i}): " + ", ".join(f"{k} = {v:.6g}" for k, v in res.items()), flush=True)

    if args.iterations is not None:
        solver.test_callback = on_test
        solver.step(args.iterations, on_iteration)
        solver.snapshot()
    else:
        solver.solve(on_iteration, on_test)
    print(f"done at iteration {solver.iter}; snapshots under {solver.snapshot_prefix()}_iter_*")
    return 0


def register_engine_verbs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("forward", help="one forward pass of a prototxt; saves every top blob to .npz")
    p.add_argument("net", help="a .prototxt (or a registered model name: its deploy net)")
    p.add_argument("--weights", help="a .caffemodel (default: initialise from the fillers with --seed)")
    p.add_argument("--input", action="append", default=[], metavar="NAME=x.npy", help="feed an input blob (repeatable)")
    p.add_argument("--phase", default="TEST", choices=["TRAIN", "TEST"])
    p.add_argument("--output", required=True, help="the .npz to write (float32 arrays keyed by blob name)")
    p.add_argument("--blobs", help="comma-separated blob names to save (default: all)")
    p.add_argument("--seed", type=int, default=0, help="filler and Data-layer seed")
    add_device_options(p)
    p.set_defaults(func=cmd_forward)

    p = sub.add_parser("time", help="per-layer forward/backward ms and images/s (like `caffe time`)")
    p.add_argument("model", help="registered model name (its train_val net) or a .prototxt")
    p.add_argument("--phase", default="TRAIN", choices=["TRAIN", "TEST"])
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--batch-size", type=int, help="batch size (default: the net's)")
    p.add_argument("--input", help="image size HxW for Data layers without crop_size")
    p.add_argument("--no-layers", action="store_true", help="whole-net figures only")
    add_device_options(p)
    p.set_defaults(func=cmd_time)

    p = sub.add_parser("solve", help="run a solver.prototxt with the torch engine (like `caffe train`)")
    p.add_argument("solver")
    p.add_argument("--snapshot", help="resume from a .solverstate")
    p.add_argument("--weights", help="initialise from a .caffemodel (fine-tuning)")
    p.add_argument("--iterations", type=int, help="run this many iterations (then snapshot) instead of to max_iter")
    p.add_argument("--workers", type=int, default=2, help="data loader processes per Data layer")
    add_device_options(p)
    p.set_defaults(func=cmd_solve)
