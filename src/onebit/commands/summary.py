"""``onebit summary``: per-layer parameters, bits, memory and MACs of a model, and what BN costs."""

from __future__ import annotations

import argparse

from onebit.errors import OnebitError
from onebit.export.targets import TARGETS

BARE_METAL_TARGETS = tuple(name for name, t in TARGETS.items() if t.bare_metal)


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
    fit = p.add_argument_group("will it fit? (bare-metal targets: exports and links the firmware)")
    fit.add_argument("--target", default=None, choices=BARE_METAL_TARGETS,
                     help="build the Cortex-M firmware for this target and report its flash and RAM, measured "
                          "from the linked image (arm-none-eabi-size); see docs/embedded.md")
    fit.add_argument("--ram", default=None, metavar="BYTES", help="RAM budget, e.g. 192K: refuse (exit 1) "
                                                                  "when a mode needs more")
    fit.add_argument("--flash", default=None, metavar="BYTES", help="flash budget, e.g. 1M")
    fit.add_argument("--mode", default="all", choices=("int", "int8", "float", "all"),
                     help="arithmetic mode(s) to build: int16 (int), 8-bit activations (int8), float, or all "
                          "(default)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from onebit.models.summary import format_summary, summarize

    if (args.model is None) == (args.preset is None):
        raise OnebitError("give either MODEL or --preset NAME (exactly one)")
    if args.preset is not None:
        from onebit.presets import get_preset

        config = get_preset(args.preset).model_config()
    else:
        from onebit.loading import load_model_file

        config = load_model_file(args.model)[0].config
    if args.target is None:
        if args.ram or args.flash:
            raise OnebitError("--ram / --flash need --target (e.g. --target cortex-m4)")
        print(format_summary(summarize(config)), end="")
        return 0
    return _fit(config, args)


def _fit(config, args: argparse.Namespace) -> int:
    """Export, link and measure the firmware of ``config``'s architecture; refuse if over budget."""
    import tempfile

    from onebit.export.firmware import fit_report

    modes = ("int", "int8", "float") if args.mode == "all" else (args.mode,)
    with tempfile.TemporaryDirectory(prefix="onebit-fit-") as tmp:
        text, problems = fit_report(config, args.target, modes, tmp, ram=args.ram, flash=args.flash)
    print(text, end="")
    if problems:
        raise OnebitError(f"{config.name} does not fit {args.target}: {'; '.join(problems)}")
    return 0
