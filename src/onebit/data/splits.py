"""The validation split: a fixed, seeded set of training images held out, the same for every run."""

from __future__ import annotations

import torch

from onebit.errors import ConfigError

VAL_SPLIT_SEED = 20190716  # fixed, so every run holds out the same validation images


def validation_split(n: int, val_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(validation indices, remaining training indices) of ``n`` training images, both in the order of one
    fixed random permutation: the validation images are its first ``val_size`` entries."""
    if val_size and val_size >= n:
        raise ConfigError(f"val_size {val_size} leaves no training images (have {n})")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
    return order[:val_size], order[val_size:]
