"""``onebit import-reference``: convert a released reference-implementation model (.mat) to a packed model."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Convert a trained model released with the reference implementation (github McDonnell-Lab/1-bit-per-weight,
TrainedModels/) into a packed .onebit model that `onebit eval` runs. Reads the tf.keras *_allparams.mat
files and the MatConvNet TrainedWideResNet20-10_*.mat files (CIFAR-10 and CIFAR-100, WRN-20-10 with BN).
*_01weights.mat files hold no BN statistics and cannot be converted on their own."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("import-reference", help="convert a released reference model (.mat) to .onebit",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE.mat", help="a *_allparams.mat (tf.keras) or "
                   "TrainedWideResNet20-10_*.mat (MatConvNet) file")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="packed model file to write (conventionally *.onebit)")
    p.add_argument("--check", action="store_true",
                   help="read the written file back and check that it gives the same logits as the "
                        "imported model on a few random images")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from onebit.errors import OnebitError
    from onebit.export.packed import load_packed, save_packed
    from onebit.reference import import_reference

    if Path(args.file).is_file():
        print(f"reading {args.file} ({Path(args.file).stat().st_size / 2**20:.0f} MiB) and converting it ...",
              flush=True)                          # stdout: stderr carries only the error line, if any
    imported = import_reference(args.file)
    cfg = imported.model.config
    print(f"{Path(args.file).name}: {imported.source_format} model, WRN-{cfg.depth}-{cfg.width}, "
          f"{cfg.num_classes} classes, 1-bit weights + BN")
    save_packed(imported.model, args.output, extra_metadata=imported.metadata())
    size = Path(args.output).stat().st_size
    print(f"wrote {args.output} ({size:,} bytes, {size / 2**20:.2f} MiB)")
    if args.check:
        reloaded, _ = load_packed(args.output)
        images = torch.randint(0, 256, (4, cfg.in_channels, 32, 32),
                               generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
        with torch.inference_mode():
            expected, got = imported.model(images), reloaded(images)
        if not torch.equal(expected, got):
            raise OnebitError(f"check failed: {args.output} gives logits differing by up to "
                              f"{(expected - got).abs().max().item():.3g} from the imported model")
        print("check: the packed model reproduces the imported model's logits exactly")
    return 0
