"""A run's data splits: train, an optional validation split held out of the training images (a fixed,
seeded set, the same for every run), and test."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from onebit.data.cifar import CifarSplit, load_cifar
from onebit.data.imagenet import ImageFolderSplit, load_image_folder
from onebit.errors import ConfigError

VAL_SPLIT_SEED = 20190716  # fixed, so every run holds out the same validation images


def validation_split(n: int, val_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(validation indices, remaining training indices) of ``n`` training images, both in the order of one
    fixed random permutation: the validation images are its first ``val_size`` entries."""
    if val_size and val_size >= n:
        raise ConfigError(f"val_size {val_size} leaves no training images (have {n})")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
    return order[:val_size], order[val_size:]


@dataclass
class Splits:
    train: CifarSplit | ImageFolderSplit
    val: CifarSplit | ImageFolderSplit | None
    test: CifarSplit | ImageFolderSplit


def load_splits(dataset: str, data_dir: str | None, *, val_size: int = 0, train_limit: int = 0,
                batch_size: int = 1, num_classes: int | None = None) -> Splits:
    """Train / optional validation / test splits of ``dataset``; the validation images come out of the
    training set, and ``train_limit`` keeps the first N of the rest (CIFAR) or a seeded subset (ImageNet)."""
    if dataset == "imagenet":
        return _image_folder_splits(data_dir, val_size, train_limit, batch_size, num_classes)
    train = load_cifar(dataset, data_dir, train=True)
    test = load_cifar(dataset, data_dir, train=False)
    val = None
    if val_size:
        val_idx, rest = validation_split(len(train), val_size)
        train_idx = rest.sort().values
        val = CifarSplit(train.images[val_idx], train.labels[val_idx], train.classes)
        train = CifarSplit(train.images[train_idx], train.labels[train_idx], train.classes)
    if train_limit:
        train = CifarSplit(train.images[:train_limit], train.labels[:train_limit], train.classes)
    if len(train) < batch_size:
        raise ConfigError(f"batch_size {batch_size} exceeds the {len(train)} training images")
    return Splits(train, val, test)


def _image_folder_splits(data_dir: str | None, val_size: int, train_limit: int, batch_size: int,
                         num_classes: int | None) -> Splits:
    """ImageFolder train/ and val/ (the test split); validation and ``train_limit`` are seeded subsets."""
    train = load_image_folder(data_dir, train=True)
    test = load_image_folder(data_dir, train=False)
    if num_classes is not None and len(train.classes) != num_classes:
        raise ConfigError(f"{train.root} has {len(train.classes)} classes but the model has {num_classes}; "
                          f"pass --classes {len(train.classes)}")
    val_idx, order = validation_split(len(train), val_size)
    val = train.subset(val_idx.sort().values) if val_size else None
    if train_limit:
        order = order[:train_limit]
    if val_size or train_limit:
        train = train.subset(order.sort().values)
    if len(train) < batch_size:
        raise ConfigError(f"batch_size {batch_size} exceeds the {len(train)} training images")
    return Splits(train, val, test)
