"""``onebit summary``: per-layer parameters, bits, memory and MACs of a model, and what BN costs."""

from __future__ import annotations

import argparse

from onebit.errors import OnebitError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "summary", help="per-layer table of parameters, bits per weight, memory and MACs",
        description="Print a per-layer table (layer, kind, output shape, parameters, bits per weight, memory, "
                    "MACs) and totals: memory at the stored bit-widths and at 32 bits, compression ratio, "
                    "MACs per 32x32 image, and the inference parameters and operations BN layers add over "
                    "the BN-free design. Give a checkpoint, run directory or .onebit file, or --preset NAME.")
    p.add_argument("model", metavar="MODEL", nargs="?", default=None,
                   help="checkpoint file, run directory or .onebit file")
    p.add_argument("--preset", metavar="NAME", default=None, help="summarize a named preset's architecture "
                                                                   "(see `onebit presets`)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from onebit.export.summary import format_summary, summarize

    if (args.model is None) == (args.preset is None):
        raise OnebitError("give either MODEL or --preset NAME (exactly one)")
    if args.preset is not None:
        from onebit.presets import get_preset

        config = get_preset(args.preset).model_config()
    else:
        from onebit.loading import load_model_file

        config = load_model_file(args.model)[0].config
    print(format_summary(summarize(config)), end="")
    return 0
