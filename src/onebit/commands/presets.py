"""``onebit presets``: list the named presets, or show one's full configuration."""

from __future__ import annotations

import argparse
import json

from onebit.presets import describe, get_preset, preset_names


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list the named training presets",
                       description="List the named presets (the paper's CIFAR table and small CPU runs), "
                                   "or print one preset's full resolved configuration.")
    p.add_argument("name", nargs="?", help="show this preset's configuration as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.name:
        print(json.dumps(get_preset(args.name).to_dict(), indent=2))
        return 0
    width = max(map(len, preset_names()))
    for name in preset_names():
        print(f"{name:<{width}}  {describe(name)}")
    return 0
