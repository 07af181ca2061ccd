"""The ``onebit`` command line: ``onebit <command> --help`` for each command's options."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import traceback

from onebit import __version__
from onebit.commands import COMMAND_MODULES
from onebit.errors import OnebitError, os_error_message


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr (exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
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
    except OSError as exc:      # disk full, read-only folder, a folder where a file is expected, ...
        print(f"onebit {args.command}: error: {os_error_message(exc)}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"onebit {args.command}: error: out of memory", file=sys.stderr)
        return 1
    except Exception as exc:    # a bug: one line here, the full traceback in a file
        where = save_traceback()
        summary = (str(exc).splitlines() or [""])[0][:300]
        print(f"onebit {args.command}: internal error: {type(exc).__name__}: {summary} "
              f"({'full traceback in ' + where if where else 'traceback could not be saved'}; please report it)",
              file=sys.stderr)
        return 1


def save_traceback() -> str | None:
    """Write the current exception's traceback to a new file in the temp folder; its path, or None."""
    try:
        fd, path = tempfile.mkstemp(prefix="onebit-traceback-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(f"onebit {__version__}, argv {sys.argv!r}\n")
            traceback.print_exc(file=f)
        return path
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
