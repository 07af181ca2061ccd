"""Epoch batches drawn from a dataset that lives on the training device as one uint8 tensor.

The order and the augmentation of epoch e depend only on (seed, e), so a run resumed at an epoch boundary
sees exactly the batches an uninterrupted run would. With ``world_size > 1`` every rank draws the same
global batch and keeps its own contiguous slice, so the global batch is that of a single process.
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
                  augment: Augmentation | None, rank: int = 0,
                  world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (augmented uint8 images, labels) for this rank's share of each global batch."""
    gen = epoch_generator(seed, epoch, images.device)
    order = torch.randperm(len(labels), generator=gen, device=images.device)
    for step in range(steps_per_epoch(len(labels), batch_size)):
        idx = order[step * batch_size:(step + 1) * batch_size]
        x, y = images[idx], labels[idx]
        if augment is not None:
            x = augment(x, gen)
        if world_size > 1:
            x = torch.tensor_split(x, world_size)[rank]
            y = torch.tensor_split(y, world_size)[rank]
        yield x, y
