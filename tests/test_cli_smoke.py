"""Every module of the package imports, and `--help` of `onebit` and of every (nested) subcommand works, in
the interpreter the tests run in; `onebit --help` and `onebit presets` do not load torch."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import subprocess
import sys

import pytest

import onebit
from onebit.cli import build_parser

SKIP = {"onebit.__main__"}          # runs the CLI on import; exercised below through `python -m onebit`


def all_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(onebit.__path__, "onebit.") if m.name not in SKIP)


def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every subcommand path (e.g. ('data', 'export-bin')) of the parser tree."""
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append(prefix + (name,))
                paths.extend(command_paths(sub, prefix + (name,)))
    return paths


def run_onebit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onebit", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_every_module_imports():
    modules = all_modules()
    assert {"onebit.cli", "onebit.commands.data", "onebit.export.c_runtime"} <= set(modules)
    for name in modules:
        importlib.import_module(name)


def test_help_of_onebit_and_every_subcommand():
    paths = command_paths(build_parser())
    assert ("train",) in paths and ("data", "export-bin") in paths
    for path in [()] + paths:
        res = run_onebit(*path, "--help")
        assert res.returncode == 0, (path, res.stderr)
        assert res.stdout.startswith(f"usage: onebit{''.join(' ' + p for p in path)}"), (path, res.stdout[:200])
        assert res.stderr == "", (path, res.stderr)


@pytest.mark.parametrize("args", [["--help"], ["presets"], ["presets", "cifar10-tiny"]])
def test_light_commands_do_not_import_torch(args):
    code = ("import json, sys\nfrom onebit.cli import main\ntry:\n    rc = main(sys.argv[1:])\n"
            "except SystemExit as exc:\n    rc = exc.code\n"
            "print(json.dumps([rc, sorted(m for m in ('torch', 'numpy', 'scipy') if m in sys.modules)]), "
            "file=sys.stderr)\n")
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    rc, heavy = json.loads(res.stderr.strip().splitlines()[-1])
    assert rc in (0, None), res.stderr
    assert "torch" not in heavy
