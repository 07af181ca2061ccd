"""``onebit data``: datasets in other layouts; ``export-bin`` writes the raw images the C demo reads."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from onebit.errors import OnebitError

RECORD_HELP = ("IMAGES: each image as 3072 bytes, uint8 CHW planar (1024 red, 1024 green, 1024 blue, rows top "
               "to bottom), raw pixels 0..255, images back to back: what `onebit_demo FILE` reads. LABELS: the "
               "CIFAR-10 binary layout, one label byte before each image (the fine label for CIFAR-100): "
               "what `onebit_demo --labels FILE` reads to print its accuracy.")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="write dataset images in other layouts (raw .bin for the C demo)",
                       description="Dataset tools.")
    p.set_defaults(func=lambda args: p.print_help() or 2)
    tools = p.add_subparsers(dest="data_command", metavar="TOOL")
    e = tools.add_parser("export-bin", help="write CIFAR images (and labels) as raw uint8 CHW for onebit_demo",
                         description="Write the images of a CIFAR split as raw bytes for the C runtime's demo "
                                     "and for microcontroller test harnesses. " + RECORD_HELP,
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    e.add_argument("--split", choices=("test", "train"), default="test", help="which split to write")
    e.add_argument("--dataset", choices=("cifar10", "cifar100"), default="cifar10", help="dataset")
    e.add_argument("--data-dir", default=None, help="dataset folder (default: $ONEBIT_DATA or cache)")
    e.add_argument("--limit", type=int, default=0, metavar="N", help="only the first N images (0: all)")
    e.add_argument("-o", "--output", required=True, metavar="IMAGES", help="raw image file to write")
    e.add_argument("--labels", default=None, metavar="LABELS",
                   help="also write the images with a label byte before each (CIFAR-10 .bin layout) here")
    e.add_argument("--force", action="store_true", help="replace existing output files")
    e.set_defaults(func=run_export_bin)


def _write(path: Path, data: bytes) -> None:
    from onebit.atomic import atomic_write_bytes

    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise OnebitError(f"cannot write {path}: {exc.strerror or exc}") from None


def run_export_bin(args: argparse.Namespace) -> int:
    import numpy as np

    from onebit.data.cifar import load_cifar

    if args.limit < 0:
        raise OnebitError(f"--limit must be >= 0, got {args.limit}")
    outputs = [Path(args.output)] + ([Path(args.labels)] if args.labels else [])
    if len(outputs) == 2 and os.path.abspath(outputs[0]) == os.path.abspath(outputs[1]):
        raise OnebitError(f"-o and --labels name the same file {args.output}; give two names")
    for path in outputs:
        if path.is_dir():
            raise OnebitError(f"{path} is a folder; give a file name")
        if path.exists() and not args.force:
            raise OnebitError(f"{path} exists; pass --force to replace it")
    split = load_cifar(args.dataset, args.data_dir, train=args.split == "train")
    n = min(args.limit, len(split)) if args.limit else len(split)
    images = np.ascontiguousarray(split.images[:n].numpy(), dtype=np.uint8)       # (n, 3, 32, 32)
    out = Path(args.output)
    _write(out, images.tobytes())
    print(f"wrote {out}: {n} {args.dataset} {args.split} images, {images[0].size if n else 3072} bytes each "
          f"(uint8 CHW), {images.nbytes:,} bytes")
    if args.labels:
        labels = split.labels[:n].numpy().astype(np.uint8).reshape(n, 1)
        records = np.concatenate([labels, images.reshape(n, -1)], axis=1)
        _write(Path(args.labels), records.tobytes())
        print(f"wrote {args.labels}: the same images, each after its label byte ({records.nbytes:,} bytes); "
              f"classes: {', '.join(split.classes[:10])}{', ...' if len(split.classes) > 10 else ''}")
    return 0
