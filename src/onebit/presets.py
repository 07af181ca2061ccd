"""Named training presets: one per configuration of the paper's CIFAR table, plus small CPU ones.

Paper presets use WRN-20-10 with the reference recipe (DESIGN.md): shifted-ReLU nets train 300 epochs with
one cosine cycle, BN nets 254 epochs of warm restarts (2, 4, ..., 128); head temperature T = 40 / 80 / 25
(CIFAR-10 1-bit / CIFAR-10 32-bit / CIFAR-100).
"""

from __future__ import annotations

from typing import Any

from onebit.errors import ConfigError
from onebit.models import default_temperature
from onebit.train.config import TrainConfig

PUBLISHED_ACCURACY = {  # McDonnell et al. 2019, Table 1 (WRN-20-10, cutout), accuracy %
    ("cifar10", "bn", 32): 96.62, ("cifar10", "bn", 1): 96.25,
    ("cifar10", "none", 32): 95.66, ("cifar10", "none", 1): 96.52,
    ("cifar100", "bn", 32): 83.02, ("cifar100", "bn", 1): 81.83,
    ("cifar100", "none", 32): 79.37, ("cifar100", "none", 1): 78.41,
}


def _paper_preset(dataset: str, norm: str, bits: int) -> dict[str, Any]:
    classes = 100 if dataset == "cifar100" else 10
    preset: dict[str, Any] = {"dataset": dataset, "depth": 20, "width": 10, "norm": norm, "weight_bits": bits}
    if norm == "bn":
        preset.update(epochs=254, schedule="restarts")
    else:
        preset.update(epochs=300, schedule="cosine", temperature=default_temperature(classes, bits))
    return preset


PRESETS: dict[str, tuple[str, dict[str, Any]]] = {}
for _ds in ("cifar10", "cifar100"):
    for _norm, _tag in (("bn", "bn"), ("none", "srelu")):
        for _bits in (1, 32):
            _name = f"{_ds}-wrn20-10-{_tag}-{_bits}bit"
            _what = "BN + ReLU (ICLR 2018)" if _norm == "bn" else "shifted ReLU, no BN (2019)"
            PRESETS[_name] = (f"paper: {_ds.upper()} WRN-20-10, {_bits}-bit weights, {_what}; published "
                              f"{PUBLISHED_ACCURACY[(_ds, _norm, _bits)]:.2f}%",
                              _paper_preset(_ds, _norm, _bits))

PRESETS.update({
    "cifar10-tiny": ("CPU, ~3 min on 2 cores: WRN-8-1, 1-bit, shifted ReLU, 6 epochs (~48% test accuracy)",
                     {"dataset": "cifar10", "depth": 8, "width": 1, "norm": "none", "weight_bits": 1,
                      "epochs": 6, "train_limit": 0, "schedule": "cosine"}),
    "cifar10-small": ("CPU, ~35 min on 2 cores: WRN-14-2, 1-bit, shifted ReLU, 10 epochs",
                      {"dataset": "cifar10", "depth": 14, "width": 2, "norm": "none", "weight_bits": 1,
                       "epochs": 10, "schedule": "cosine"}),
    "cifar10-small-bn": ("CPU, ~50 min on 2 cores: WRN-14-2, 1-bit, BN + ReLU, 14 epochs of warm restarts",
                         {"dataset": "cifar10", "depth": 14, "width": 2, "norm": "bn", "weight_bits": 1,
                          "epochs": 14, "schedule": "restarts"}),
})


# ImageNet (McDonnell, ICLR 2018): WRN-18 with 160 channels in the first stage ("18-2.5", k = 10
# here), 62 epochs of warm restarts (cycles 2, 4, 8, 16, 32), weight decay 1e-4, scale/crop/flip
# augmentation. Batch 256 at lr 0.1 is the usual ImageNet ResNet setting (our choice). Published error
# (BN, top-1/top-5): 1-bit 31.03/11.51 single crop, 26.04/8.48 with 25 crops; 32-bit 26.92/9.20 and
# 22.99/6.91. The shifted-ReLU ImageNet nets are not in either paper (T = 25 is our guess).
PUBLISHED_IMAGENET_ERROR = {("bn", 1): (31.03, 11.51, 26.04, 8.48), ("bn", 32): (26.92, 9.20, 22.99, 6.91)}
for _norm, _tag in (("bn", "bn"), ("none", "srelu")):
    for _bits in (1, 32):
        _err = PUBLISHED_IMAGENET_ERROR.get((_norm, _bits))
        _pub = (f"published top-1/top-5 error {_err[0]:.2f}/{_err[1]:.2f} (1 crop), "
                f"{_err[2]:.2f}/{_err[3]:.2f} (25 crops)"
                if _err else "not in the papers")
        PRESETS[f"imagenet-wrn18-2.5-{_tag}-{_bits}bit"] = (
            f"paper: ImageNet WRN-18-2.5, {_bits}-bit weights, "
            f"{'BN + ReLU with learned scale/offset' if _norm == 'bn' else 'shifted ReLU, no BN'}; {_pub}",
            {"dataset": "imagenet", "depth": 18, "width": 10, "norm": _norm, "weight_bits": _bits,
             "epochs": 62, "schedule": "restarts", "first_cycle": 2, "batch_size": 256, "lr": 0.1,
             "weight_decay": 1e-4, "translate": 0, "cutout": 0, "flip": True, "crop_size": 224,
             "resize_size": 256, "eval_batch_size": 250})


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str, **overrides: Any) -> TrainConfig:
    """The TrainConfig of preset ``name`` with ``overrides`` applied."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; `onebit presets` lists them")
    return TrainConfig.from_dict({**PRESETS[name][1], **overrides})


def describe(name: str) -> str:
    return PRESETS[name][0]
