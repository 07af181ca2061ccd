"""CIFAR-10 and CIFAR-100 in the official python format, read without executing any pickled code.

CIFAR-10: ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``;
CIFAR-100: ``cifar-100-python/{train, test, meta}`` (fine labels; coarse labels kept as well).
Images are returned as one uint8 tensor (N, 3, 32, 32) of raw 0..255 pixels.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from onebit.data.datasets import DATASETS
from onebit.data.download import download_and_extract
from onebit.data.safe_pickle import safe_load
from onebit.errors import DataError

@dataclass
class CifarSplit:
    images: torch.Tensor          # uint8 (N, 3, 32, 32), raw pixels
    labels: torch.Tensor          # int64 (N,)
    classes: list[str]
    coarse_labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)


def default_data_root() -> Path:
    """``$ONEBIT_DATA`` if set, else a per-user cache folder."""
    if os.environ.get("ONEBIT_DATA"):
        return Path(os.environ["ONEBIT_DATA"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "onebit" / "data"


def find_dataset_dir(dataset: str, root: str | Path | None, download: bool = True) -> Path:
    """Locate (or download into ``root``) the folder holding ``dataset``'s batch files."""
    spec = _spec(dataset)
    root = Path(root).expanduser() if root else default_data_root()
    candidates = [root / spec["folder"], root]
    for cand in candidates:
        if (cand / spec["test"][0]).is_file() or (cand / spec["train"][0]).is_file():
            return cand
    looked = candidates
    if not download:
        raise DataError(f"{dataset} not found (looked in: {', '.join(map(str, looked))}); "
                        f"pass --data-dir DIR or set ONEBIT_DATA=DIR")
    download_and_extract(spec["url"], spec["md5"], root, dataset, looked)
    return root / spec["folder"]


def _spec(dataset: str) -> dict:
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose from {sorted(DATASETS)}")
    return DATASETS[dataset]


def _read_batch(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"missing data file {path}")
    try:
        batch = safe_load(path.read_bytes())
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, ImportError, MemoryError) as exc:
        raise DataError(f"corrupt or truncated data file {path}: {exc}") from None
    if not isinstance(batch, dict):
        raise DataError(f"corrupt data file {path}: expected a dict, got {type(batch).__name__}")
    return batch


def load_cifar(dataset: str, root: str | Path | None = None, train: bool = True,
               download: bool = True) -> CifarSplit:
    """Read the training or test split of ``dataset`` ('cifar10' or 'cifar100')."""
    spec = _spec(dataset)
    folder = find_dataset_dir(dataset, root, download)
    images, labels, coarse = [], [], []
    for name in spec["train" if train else "test"]:
        path = folder / name
        batch = _read_batch(path)
        try:
            raw = batch["data"]
            if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8:
                raise ValueError(f"pixels must be a uint8 array, got "
                                 f"{raw.dtype if isinstance(raw, np.ndarray) else type(raw).__name__}")
            data = raw
            lab = np.asarray(batch[spec["label_key"]], dtype=np.int64)
            if data.ndim != 2 or data.shape[1] != 3072 or len(lab) != len(data):
                raise ValueError(f"data shape {data.shape} with {len(lab)} labels")
            if len(lab) and (lab.min() < 0 or lab.max() >= spec["num_classes"]):
                raise ValueError(f"labels outside 0..{spec['num_classes'] - 1}")
        except (KeyError, ValueError, TypeError) as exc:
            raise DataError(f"corrupt data file {path}: {exc}") from None
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
        if "coarse_labels" in batch:
            coarse.append(np.asarray(batch["coarse_labels"], dtype=np.int64))
    classes = _class_names(folder / spec["meta"], spec)
    return CifarSplit(
        images=torch.from_numpy(np.concatenate(images)),
        labels=torch.from_numpy(np.concatenate(labels)),
        classes=classes,
        coarse_labels=torch.from_numpy(np.concatenate(coarse)) if coarse else None,
    )


def known_class_names(dataset: str, root: str | Path | None = None) -> list[str] | None:
    """The class names in ``dataset``'s meta file where it is on disk (never downloads), else None."""
    spec = _spec(dataset)
    try:
        names = _class_names(find_dataset_dir(dataset, root, download=False) / spec["meta"], spec)
    except DataError:
        return None
    return None if names == [str(i) for i in range(spec["num_classes"])] else names


def _class_names(meta_path: Path, spec: dict) -> list[str]:
    if meta_path.is_file():
        meta = _read_batch(meta_path)
        names = meta.get(spec["names_key"])
        if isinstance(names, list) and len(names) == spec["num_classes"]:
            return [str(n) for n in names]
    return [str(i) for i in range(spec["num_classes"])]
