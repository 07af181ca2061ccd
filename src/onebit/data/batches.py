"""Epoch batches: the order and augmentation of epoch e depend only on (seed, e).

So a run resumed at an epoch boundary sees exactly the batches an uninterrupted run would. With
``world_size > 1`` every rank draws the same global batch and keeps its own contiguous slice (the
``torch.tensor_split`` share), so the global batch is that of a single process.

* ``epoch_batches``: a dataset that lives on the training device as one uint8 tensor (CIFAR), augmented
  there batch by batch.
* ``GlobalBatchSampler``: the same scheme for datasets read from files by DataLoader workers (ImageNet):
  it yields this rank's slice of each global batch as ``(index, seed)`` keys, the seed fixing the sample's
  random augmentation.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from onebit.data.augment import Augmentation


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed * 1_000_003 + epoch)
    return gen


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    """Full batches per epoch (the remainder of a random permutation is dropped)."""
    return num_images // batch_size


def epoch_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int, epoch: int,
                  augment: Augmentation | None, rank: int = 0, world_size: int = 1,
                  targets: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
    """Yield (augmented uint8 images, labels) for this rank's share of each global batch; with ``targets``
    (one row per image, e.g. a teacher's logits) each batch's rows come third."""
    gen = epoch_generator(seed, epoch, images.device)
    order = torch.randperm(len(labels), generator=gen, device=images.device)
    for step in range(steps_per_epoch(len(labels), batch_size)):
        idx = order[step * batch_size:(step + 1) * batch_size]
        batch = [images[idx], labels[idx]] + ([targets[idx]] if targets is not None else [])
        if augment is not None:
            batch[0] = augment(batch[0], gen)
        if world_size > 1:
            batch = [torch.tensor_split(t, world_size)[rank] for t in batch]
        yield tuple(batch)


def rank_slice(n: int, rank: int, world_size: int) -> slice:
    """This rank's contiguous share of ``n`` items, as ``torch.tensor_split`` cuts them."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


class GlobalBatchSampler:
    """Batch sampler over ``num_items`` files: epoch e's permutation and per-sample augmentation seeds come
    from (seed, e); every rank yields its ``rank_slice`` of each full global batch as ``(index, seed)``
    keys. Call ``set_epoch`` before iterating (works with persistent DataLoader workers)."""

    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return steps_per_epoch(self.num_items, self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        gen = epoch_generator(self.seed, self.epoch, torch.device("cpu"))
        order = torch.randperm(self.num_items, generator=gen).tolist()
        seeds = torch.randint(0, 2**62, (self.num_items,), generator=gen).tolist()
        mine = rank_slice(self.batch_size, self.rank, self.world_size)
        for step in range(len(self)):
            keys = list(zip(order[step * self.batch_size:(step + 1) * self.batch_size],
                            seeds[step * self.batch_size:(step + 1) * self.batch_size]))
            yield keys[mine]
