"""The ``onebit`` command line: ``onebit <command> --help`` for each command's options."""

from __future__ import annotations

import argparse
import importlib
import sys

from onebit import __version__
from onebit.commands import COMMAND_MODULES
from onebit.errors import OnebitError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onebit",
        description="1-bit-per-weight wide residual networks with and without batch normalization "
                    "(McDonnell et al. 2019): train, evaluate, study, export.")
    parser.add_argument("--version", action="version", version=f"onebit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except OnebitError as exc:
        print(f"onebit {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # output piped into e.g. `head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"onebit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
