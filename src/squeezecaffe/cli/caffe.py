"""`squeezecaffe build-caffe` (behind `make caffe`) and `squeezecaffe doctor` (what this machine can run)."""

from __future__ import annotations

import argparse
import platform

from squeezecaffe.caffe_build.command import add_build_arguments


def cmd_build_caffe(args: argparse.Namespace) -> int:
    from squeezecaffe.caffe_build.command import run_build

    run_build(args)
    return 0


def doctor_rows() -> list[tuple[str, str]]:
    """(what, state) lines: engines, devices, the Caffe build and its tools."""
    import cv2
    import google.protobuf
    import torch

    from squeezecaffe.caffe_build.locate import build_dir, find_build, find_tool
    from squeezecaffe.caffe_build.recipe import TOOLS, recipe_hash
    from squeezecaffe.engines.pycaffe.runtime import import_caffe
    from squeezecaffe.errors import UserError

    rows = [("python", platform.python_version()), ("torch", torch.__version__),
            ("protobuf (python)", google.protobuf.__version__), ("opencv", cv2.__version__)]
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        rows.append(("cuda devices", f"{torch.cuda.device_count()}: {names} (CUDA {torch.version.cuda})"))
    else:
        rows.append(("cuda devices", f"none (torch built for CUDA {torch.version.cuda or 'none'})"))
    rows.append(("engine torch", "available (cpu" + (", cuda)" if torch.cuda.is_available() else ")")))
    build = find_build()
    if build is None:
        rows.append(("caffe build", f"not built (recipe {recipe_hash()} -> {build_dir()}); run: make caffe"))
    else:
        info = build.info
        kind = ("bundle, CUDA" if build.is_bundle else "CUDA" if build.cuda else "CPU only" if build.cpu_only
                else "not built here: CUDA unknown")
        rows.append(("caffe build", f"{build.home} ({info.get('sdist', '?')}, {kind}, built {info.get('built', '?')})"))
    cuda_build = find_build(cuda=True)
    if cuda_build is not None and cuda_build != build:
        rows.append(("caffe build (cuda)", f"{cuda_build.home} (--engine caffe --device cuda uses it)"))
    try:
        caffe = import_caffe()
        if hasattr(caffe, "cuda_device_count"):  # our C interface (a bundle, or SQUEEZECAFFE_CAFFE_BINDING=capi)
            rows.append(("engine caffe", f"available: Caffe through our C interface, {caffe.__file__}"))
        else:
            rows.append(("engine caffe", f"available: pycaffe {getattr(caffe, '__version__', '?')} from "
                         f"{caffe.__file__.rsplit('/caffe/', 1)[0]}"))
    except UserError as exc:
        rows.append(("engine caffe", f"unavailable: {exc}"))
    rows.append(("engine opencv (eval)", f"available: OpenCV {cv2.__version__} dnn"))
    for tool in TOOLS:
        path = find_tool(tool)
        rows.append((f"tool {tool}", str(path) if path else "not found"))
    return rows


def cmd_doctor(args: argparse.Namespace) -> int:
    rows = doctor_rows()
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def register_caffe_verbs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-caffe", help="build real Caffe from source into the cache (what `make caffe` runs)")
    add_build_arguments(p)
    p.set_defaults(func=cmd_build_caffe)
    p = sub.add_parser("doctor", help="which engines, devices, Caffe build and tools this machine has")
    p.set_defaults(func=cmd_doctor)
