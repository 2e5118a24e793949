"""`squeezecaffe <verb>`: the command line; each verb is a thin shell over a library function.

The verbs live in this package by subject (netgen, data, engine, train, evaluation, compress, export, caffe), each module
registering its own; `common` holds what several of them parse.

A UserError anywhere becomes one line on stderr and exit code 2; so do bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from squeezecaffe import __version__
from squeezecaffe.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (exit 2) instead of usage + message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message}")



def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="squeezecaffe", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"squeezecaffe {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)

    from squeezecaffe.cli.caffe import register_caffe_verbs
    from squeezecaffe.cli.compress import register_compress_verbs
    from squeezecaffe.cli.data import register_data_verbs
    from squeezecaffe.cli.engine import register_engine_verbs
    from squeezecaffe.cli.evaluation import register_evaluation_verbs
    from squeezecaffe.cli.export import register_export_verbs
    from squeezecaffe.cli.netgen import register_netgen_verbs
    from squeezecaffe.cli.train import register_train_verbs

    register_netgen_verbs(sub)
    register_data_verbs(sub)
    register_engine_verbs(sub)
    register_train_verbs(sub)
    register_evaluation_verbs(sub)
    register_compress_verbs(sub)
    register_export_verbs(sub)
    register_caffe_verbs(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"squeezecaffe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("squeezecaffe: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `squeezecaffe list | head`: the reader left; say nothing more
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
