"""`python -m squeezecaffe.caffe_build [--cuda] [--bundle DIR] [--jobs N] [--force]`: build-caffe without the CLI,
so a machine (the Docker image's Caffe stage) needs only numpy besides the build's own dependencies."""

from __future__ import annotations

import argparse
import sys

from squeezecaffe.caffe_build.command import add_build_arguments, run_build
from squeezecaffe.errors import UserError


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m squeezecaffe.caffe_build", description=__doc__.splitlines()[0])
    add_build_arguments(p)
    try:
        run_build(p.parse_args())
    except UserError as exc:
        print(f"squeezecaffe build-caffe: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
