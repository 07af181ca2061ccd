"""ImageNet input pipeline speed: JPEG decoding alone, and decoding + training augmentation, in images/s.

Baseline: decoding in the main process (``--workers 0``). Subject: the same work spread over ``--workers``
DataLoader worker processes, as ``onebit train`` runs it. Both from the same run; the ratio is printed.
Decoding is ``torchvision.io.decode_image`` (libjpeg-turbo); the augmentation is the training transform
of ``onebit.data.imagenet`` (random-resized crop to 224 + flip) on the decoded uint8 tensor.

    onebit bench imagenet-loader --folder /data/imagenet --workers 16     # real ImageNet (train/)
    onebit bench imagenet-loader --images 256 --workers 2                  # synthetic JPEGs

Without ``--folder`` it writes synthetic JPEGs of ImageNet's typical size (500 x 375, quality 90,
smooth content plus noise, ~100 KB) to a temporary folder. A GPU training step consumes images at the
rate ``onebit bench gpu-train`` reports; the loader must exceed it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.io import encode_jpeg, write_file

from onebit.cpus import usable_cpus
from onebit.data.imagenet import load_image_folder, read_image, train_transform
from onebit.errors import ConfigError


def write_synthetic_folder(root: Path, images: int, classes: int = 8, size: tuple[int, int] = (375, 500)) -> None:
    """``root/train/cK/*.JPEG`` and a small ``root/val``: smooth random colour fields plus pixel noise."""
    gen = torch.Generator().manual_seed(0)
    h, w = size
    for split, count in (("train", images), ("val", classes)):
        for i in range(count):
            folder = root / split / f"c{i % classes:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            coarse = torch.rand(1, 3, 6, 8, generator=gen) * 255
            img = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0]
            img = img + torch.randn(3, h, w, generator=gen) * 12
            write_file(str(folder / f"img{i:05d}.JPEG"), encode_jpeg(img.clamp(0, 255).to(torch.uint8), quality=90))


class Decoded(Dataset):
    """Decodes (and optionally augments) image i; returns only a size, so batches need no stacking."""

    def __init__(self, paths: list[str], transform=None):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> int:
        image = read_image(self.paths[i])
        if self.transform is not None:
            image = self.transform(image)
        return image.numel()


def count_batch(batch: list[int]) -> int:
    return len(batch)


def rate(paths: list[str], workers: int, transform, passes: int) -> float:
    """Images per second through a DataLoader, excluding worker start-up (timed from the first batch)."""
    loader = DataLoader(Decoded(paths, transform), batch_size=32, shuffle=False, num_workers=workers,
                        collate_fn=count_batch, persistent_workers=workers > 0)
    seen, start = 0, None
    for _ in range(passes):
        for n in loader:
            if start is None:
                start = time.perf_counter()
                continue
            seen += n
    return seen / (time.perf_counter() - start)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--folder", default=None, help="ImageFolder root holding train/ (default: synthetic)")
    ap.add_argument("--images", type=int, default=512, help="images to read (synthetic: to write)")
    ap.add_argument("--workers", type=int, default=len(usable_cpus()), help="DataLoader worker processes")
    ap.add_argument("--crop", type=int, default=224, help="training crop size")
    ap.add_argument("--passes", type=int, default=2, help="passes over the images per measurement")


def run(args: argparse.Namespace) -> int:
    if not (1 <= args.images <= 10_000_000 and 1 <= args.workers <= 256 and 1 <= args.passes <= 1000
            and 16 <= args.crop <= 4096):
        raise ConfigError("need 1 <= --images <= 10000000, 1 <= --workers <= 256, 1 <= --passes <= 1000, "
                          "16 <= --crop <= 4096")
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.folder) if args.folder else Path(tmp)
        if not args.folder:
            write_synthetic_folder(root, args.images)
        paths = load_image_folder(root, train=True).paths
        if len(paths) > args.images:  # a spread-out subset: every k-th file
            paths = paths[::len(paths) // args.images][:args.images]
        kb = sum(os.path.getsize(p) for p in paths) / len(paths) / 1024
        first = read_image(paths[0])
        print(f"{len(paths)} images from {'synthetic JPEGs' if not args.folder else root}, mean file "
              f"{kb:.0f} KB, first {tuple(first.shape[1:])}; {len(usable_cpus())} usable CPUs; {args.passes} passes")
        augment = train_transform(args.crop)
        for what, transform in (("decode only", None), (f"decode + crop {args.crop} + flip", augment)):
            base = rate(paths, 0, transform, args.passes)
            sub = rate(paths, args.workers, transform, args.passes)
            print(f"{what:<28} main process {base:8.1f} img/s   {args.workers} workers {sub:8.1f} img/s   "
                  f"ratio {sub / base:.2f}x ({sub / args.workers:.1f} img/s per worker)")
    return 0
