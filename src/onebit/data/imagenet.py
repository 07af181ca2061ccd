"""ImageNet (or any image classification set) in the ImageFolder layout, decoded by torchvision.

Layout: ``ROOT/train/CLASS/*.JPEG`` and ``ROOT/val/CLASS/*.JPEG`` (the same class folders in both). Images
come out as uint8 tensors (3, S, S) of raw 0..255 pixels; the model's input BN does the normalisation.

* Training: random-resized crop (area 8%..100%, aspect 3/4..4/3) to ``crop`` x ``crop`` and a horizontal
  flip with p = 1/2 -- the scale/crop/flip augmentation of McDonnell (ICLR 2018).
* Evaluation: resize the shorter side to ``resize``, centre crop ``crop``.
* 25-crop evaluation (ICLR 2018): the shorter side resized to 5 scales ``crop * (7, 8, 9, 10, 11)
  / 7`` (224, 256, 288, 320, 352 for crop 224) and, at each, the 4 corner and the centre crops; the softmax
  outputs of the 25 crops are averaged. The paper names 5 scales x 5 positions but not the scales: these
  are our choice (the centre crop at the second scale is the single-crop evaluation).

Training samples are addressed as ``(index, seed)``: the crop and flip of an image depend only on the seed
drawn for it by the epoch's sampler, so any number of ranks and workers yields the same batches.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from onebit.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MULTI_CROP_SCALES = (7, 8, 9, 10, 11)  # shorter side = crop * s / 7


@dataclass
class ImageFolderSplit:
    """One split of an ImageFolder dataset: file paths, integer labels and the class names."""

    paths: list[str]
    labels: torch.Tensor          # int64 (N,)
    classes: list[str]
    root: Path

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: torch.Tensor) -> "ImageFolderSplit":
        idx = indices.tolist()
        return ImageFolderSplit([self.paths[i] for i in idx], self.labels[indices], self.classes, self.root)


def find_imagenet_dir(root: str | Path | None) -> Path:
    """The folder holding ``train/`` and ``val/`` (``root`` itself or ``root/imagenet``)."""
    if root is None:
        from onebit.data.cifar import default_data_root

        root = default_data_root()
    root = Path(root).expanduser()
    for cand in (root, root / "imagenet"):
        if (cand / "train").is_dir() and (cand / "val").is_dir():
            return cand
    raise DataError(f"ImageNet not found: no train/ and val/ class folders in {root} or {root / 'imagenet'}; "
                    f"pass --data-dir DIR with DIR/train/CLASS/*.JPEG and DIR/val/CLASS/*.JPEG")


def load_image_folder(root: str | Path | None, train: bool) -> ImageFolderSplit:
    """List ``train/`` or ``val/`` of an ImageFolder dataset (classes = sorted sub-folder names)."""
    base = find_imagenet_dir(root)
    folder = base / ("train" if train else "val")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"{folder} holds no class folders")
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in (folder / name).iterdir()
                       if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        paths += [str(f) for f in files]
        labels += [label] * len(files)
    if not paths:
        raise DataError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    if not train:
        train_classes = sorted(d.name for d in (base / "train").iterdir() if d.is_dir())
        if train_classes != classes:
            raise DataError(f"{folder} and {base / 'train'} hold different class folders")
    return ImageFolderSplit(paths, torch.tensor(labels, dtype=torch.int64), classes, base)


def read_image(path: str) -> torch.Tensor:
    """Decode an image file to a uint8 (3, H, W) RGB tensor (grey and CMYK JPEGs are converted).

    torchvision 0.29 deprecates its decoders in favour of TorchCodec; its per-call warning is silenced
    here, the one place to change when they go.
    """
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The image decoding and encoding", DeprecationWarning)
            return decode_image(path, mode=ImageReadMode.RGB)
    except (RuntimeError, OSError, ValueError) as exc:
        raise DataError(f"cannot decode image {path}: {str(exc).splitlines()[0]}") from None


def train_transform(crop: int, flip: bool = True) -> v2.Transform:
    """Random-resized crop to ``crop`` x ``crop`` (+ horizontal flip), on uint8 tensors."""
    steps: list[v2.Transform] = [v2.RandomResizedCrop(crop, antialias=True)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def eval_transform(crop: int, resize: int) -> v2.Transform:
    """Resize the shorter side to ``resize``, then the centre ``crop`` x ``crop``."""
    return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(crop)])


class MultiCrop:
    """The 25 crops of ICLR 2018: 5 scales x (4 corners + centre), stacked to (25, 3, crop, crop)."""

    def __init__(self, crop: int):
        self.resizes = [v2.Resize(round(crop * s / 7), antialias=True) for s in MULTI_CROP_SCALES]
        self.five = v2.FiveCrop(crop)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return torch.stack([c for resize in self.resizes for c in self.five(resize(image))])


class ImageFolderDataset(torch.utils.data.Dataset):
    """Decoded, transformed images of a split. Keys are ``index`` or ``(index, seed)``; a seed fixes the
    random transform of that sample (drawn under a private RNG state, so the global RNG is untouched)."""

    def __init__(self, split: ImageFolderSplit, transform):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key) -> tuple[torch.Tensor, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image = read_image(self.split.paths[index])
        if seed is None:
            out = self.transform(image)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                out = self.transform(image)
        return out, int(self.split.labels[index])
