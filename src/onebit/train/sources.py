"""Where training and evaluation batches come from: a device tensor (CIFAR) or DataLoader workers (ImageNet).

Both kinds follow one scheme (``data/batches.py``): batches are global batches of the whole job, and
each rank gets its ``rank_slice``. A training source yields ``(uint8 images, labels)`` already on the
device; evaluation yields this rank's share of the split in order, so sums over ranks give the metrics of
the whole split.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from onebit.data.augment import Augmentation
from onebit.data.batches import GlobalBatchSampler, epoch_batches, rank_slice, steps_per_epoch
from onebit.data.cifar import CifarSplit
from onebit.data.imagenet import (ImageFolderDataset, ImageFolderSplit, MultiCrop, eval_transform,
                                  train_transform)
from onebit.errors import DataError
from onebit.cpus import usable_cpus

Split = CifarSplit | ImageFolderSplit


def global_batches(n: int, batch_size: int, rank: int, world_size: int) -> list[list[int]]:
    """Indices of this rank's share of the consecutive global batches over ``n`` items (last one partial)."""
    out = []
    for start in range(0, n, batch_size):
        size = min(batch_size, n - start)
        part = rank_slice(size, rank, world_size)
        out.append(list(range(start + part.start, start + part.stop)))
    return out


def usable_workers(workers: int | None) -> int:
    """``workers`` capped at the CPUs this process may use (None: up to 8)."""
    return min(8 if workers is None else workers, len(usable_cpus()))


def _loader(dataset, batches: list[list[int]], workers: int, device: torch.device) -> DataLoader:
    workers = usable_workers(workers)
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                      pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)


def _one_line(exc: DataError) -> DataError:
    """A DataError re-raised from a DataLoader worker carries the worker's traceback: keep its last line."""
    last = str(exc).strip().splitlines()[-1]
    return DataError(last.split("DataError: ", 1)[-1])


class TensorSource:
    """The training split as one uint8 tensor on the device, augmented there (CIFAR)."""

    def __init__(self, split: CifarSplit, cfg: Any, device: torch.device, rank: int = 0, world_size: int = 1,
                 progress: bool = False):
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.cfg, self.device, self.rank, self.world_size = cfg, device, rank, world_size
        self.augment = Augmentation(cfg.translate, cfg.flip, cfg.cutout)
        self.steps_per_epoch = steps_per_epoch(len(self.labels), cfg.batch_size)
        self.teacher = None                    # a teacher's logits per training image (distillation)
        if getattr(cfg, "teacher", None):
            from onebit.train.config import teacher_file
            from onebit.train.distill import teacher_logits

            self.teacher = teacher_logits(teacher_file(cfg.teacher), split.images, cfg.num_classes, progress=progress,
                                          device=device).to(device)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """(images, labels) batches, or (images, labels, teacher logits) when distilling."""
        return epoch_batches(self.images, self.labels, self.cfg.batch_size, self.cfg.seed, epoch, self.augment,
                             self.rank, self.world_size, targets=self.teacher)


class LoaderSource:
    """Training images decoded and augmented by DataLoader workers into pinned memory (ImageFolder)."""

    def __init__(self, split: ImageFolderSplit, cfg: Any, device: torch.device, rank: int = 0,
                 world_size: int = 1):
        self.split, self.cfg, self.device, self.rank, self.world_size = split, cfg, device, rank, world_size
        self.sampler = GlobalBatchSampler(len(split), cfg.batch_size, cfg.seed, rank, world_size)
        self.steps_per_epoch = len(self.sampler)
        dataset = ImageFolderDataset(split, train_transform(cfg.crop_size, cfg.flip))
        workers = usable_workers(cfg.workers)
        self.loader = DataLoader(dataset, batch_sampler=self.sampler, num_workers=workers,
                                 pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                                 prefetch_factor=4 if workers else None)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.set_epoch(epoch)
        try:
            for x, y in self.loader:
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        except DataError as exc:
            raise _one_line(exc) from None


def make_source(split: Split, cfg: Any, device: torch.device, rank: int = 0, world_size: int = 1,
                progress: bool = False):
    if isinstance(split, ImageFolderSplit):
        return LoaderSource(split, cfg, device, rank, world_size)
    return TensorSource(split, cfg, device, rank, world_size, progress)


def split_batches(split: Split, batch_size: int, rank: int = 0, world_size: int = 1,
                  device: torch.device | str = "cpu", crops: int = 1, keep_empty: bool = False,
                  crop_size: int = 224, resize_size: int = 256,
                  workers: int | None = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's share of ``split`` in order, un-augmented: (uint8 images, labels) on ``device``.

    ImageFolder images are centre crops (``crops=1``) or the 25 crops, shape (B, 25, 3, S, S), decoded
    by ``workers`` processes; ``batch_size`` counts crops. ``keep_empty`` yields empty batches where this
    rank's share is empty (so that every rank runs the same number of batches).
    """
    device = torch.device(device)
    if crops not in (1, 25):
        raise ValueError(f"crops must be 1 or 25, got {crops}")
    per_batch = max(1, batch_size // crops)
    plan = global_batches(len(split), per_batch, rank, world_size)
    if isinstance(split, CifarSplit):
        for idx in plan:
            if idx or keep_empty:
                sl = slice(idx[0], idx[-1] + 1) if idx else slice(0, 0)
                yield split.images[sl].to(device), split.labels[sl].to(device)
        return
    transform = MultiCrop(crop_size) if crops == 25 else eval_transform(crop_size, resize_size)
    loader = iter(_loader(ImageFolderDataset(split, transform), [b for b in plan if b], workers, device))
    shape = (0, 25, 3) if crops == 25 else (0, 3)
    try:
        for idx in plan:
            if idx:
                x, y = next(loader)
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            elif keep_empty:
                empty = torch.empty(shape + (crop_size, crop_size), dtype=torch.uint8, device=device)
                yield empty, torch.empty(0, dtype=torch.int64, device=device)
    except DataError as exc:
        raise _one_line(exc) from None
