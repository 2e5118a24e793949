"""The build command's options and action, in one place for its two entry points: `squeezecaffe build-caffe` (the
CLI) and `python -m squeezecaffe.caffe_build` (the same without the rest of squeezecaffe's dependencies: torch,
OpenCV; what the Docker image's Caffe stage runs)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from squeezecaffe.caffe_build.locate import CaffeBuild
from squeezecaffe.errors import UserError


def add_build_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jobs", type=int, default=None, help="compile jobs (default: all cores)")
    p.add_argument("--force", action="store_true", help="rebuild even when a finished build is cached")
    p.add_argument("--cuda", action="store_true",
                   help="the CUDA build (CUDA 13 + cuDNN 9 from PyPI wheels, sm_75..sm_90; about 20 minutes on 2 cores)")
    p.add_argument("--bundle", type=Path, default=None, metavar="DIR",
                   help="with --cuda: also write a portable copy for a GPU machine without Caffe's dependencies")


def run_build(args: argparse.Namespace, echo: Callable[[str], None] = print) -> CaffeBuild:
    """Build (or reuse) the recipe the options name, then write the bundle where asked."""
    from squeezecaffe.caffe_build.build import build_caffe

    if args.bundle is not None and not args.cuda:
        raise UserError("--bundle DIR carries the CUDA build: add --cuda")
    build = build_caffe(jobs=args.jobs, force=args.force, echo=echo, cuda=args.cuda)
    if args.bundle is not None:
        from squeezecaffe.caffe_build.bundle import write_bundle
        from squeezecaffe.caffe_build.toolkit import CudaToolkit, toolkit_dir

        write_bundle(build, args.bundle, CudaToolkit(toolkit_dir()).library_dirs, echo)
    return build
