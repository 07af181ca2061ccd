"""The architecture of a WRN as data (``WRNConfig``, ``ReferenceLayout``) and the paper's head temperatures;
no torch here, so that the CLI and the presets load fast. ``onebit.models.wrn`` builds the network from it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

NORMS = ("bn", "none")
ARCHS = ("cifar", "imagenet")
PAD_MODES = ("symmetric", "tf_same")  # "tf_same": the Keras reference models' stride-2 padding
HEAD_POOLS = ("mean", "sum")      # "sum": the MatConvNet reference models' head (64x the mean on 8x8 maps)


def parse_wrn_name(name: str) -> tuple[int, int] | None:
    """(depth d, width k) of a ``wrn-d-k`` name (any case, no design suffix), or None when ``name`` is not one."""
    parsed = parse_model_name(name)
    return parsed[:2] if parsed and name.strip().count("-") == 2 else None


def parse_model_name(name: str) -> tuple[int, int, str] | None:
    """(depth d, width k, norm) of ``wrn-d-k`` (BN-free), ``wrn-d-k-srelu`` (the same) or ``wrn-d-k-bn`` (BN
    design), any case; None when ``name`` is not one. The one grammar of model names on the command line."""
    match = re.fullmatch(r"wrn-(\d+)-(\d+)(-bn|-srelu)?", name.strip().lower())
    if not match:
        return None
    return int(match.group(1)), int(match.group(2)), "bn" if match.group(3) == "-bn" else "none"


def infer_dataset(config: "WRNConfig") -> str:
    """The dataset a network's shape implies when nothing records it: ImageNet for the ImageNet WRN, else
    CIFAR-100 for 100 classes, else CIFAR-10."""
    if config.arch == "imagenet":
        return "imagenet"
    return "cifar100" if config.num_classes == 100 else "cifar10"


def default_temperature(num_classes: int, weight_bits: int) -> float:
    """The paper's head temperature T: 40 (CIFAR-10, 1-bit), 80 (CIFAR-10, 32-bit), 25 (CIFAR-100)."""
    if num_classes >= 100:
        return 25.0
    return 40.0 if weight_bits == 1 else 80.0


@dataclass(frozen=True)
class ReferenceLayout:
    """Details that exist only to reproduce the released reference models exactly (``reference.py``,
    ``onebit import-reference``); the defaults are onebit's own networks.

    * ``pad_mode``: ``symmetric`` (1 pixel on every side) or ``tf_same`` (the Keras models' stride-2 'same'
      padding: nothing before, 1 after);
    * ``stem_relu``: a ReLU after the stem conv (the MatConvNet models);
    * ``head_pool``: ``mean`` (global average pool) or ``sum`` (the MatConvNet models: 64x the mean on 8x8).
    """

    pad_mode: str = "symmetric"
    stem_relu: bool = False
    head_pool: str = "mean"

    def __post_init__(self) -> None:
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {self.pad_mode!r}")
        if self.head_pool not in HEAD_POOLS:
            raise ValueError(f"head_pool must be one of {HEAD_POOLS}, got {self.head_pool!r}")


LAYOUT_KEYS = tuple(f.name for f in dataclasses.fields(ReferenceLayout))


@dataclass
class WRNConfig:
    """Everything that defines a network's architecture (stored in checkpoints and model files)."""

    depth: int = 20
    width: int = 10
    num_classes: int = 10
    norm: str = "none"
    weight_bits: int = 1
    temperature: float | None = None
    binarize_first_last: bool = True
    in_channels: int = 3
    reference: ReferenceLayout = dataclasses.field(default_factory=ReferenceLayout)
    arch: str = "cifar"

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        per = 2 * len(self.stage_widths)
        if self.depth < per + 2 or (self.depth - 2) % per != 0:
            examples = ", ".join(str(per * n + 2) for n in (1, 2, 3, 4))
            kind = "ImageNet WRN" if self.arch == "imagenet" else "WRN"
            raise ValueError(f"{kind} depth must be {per}n+2 with n >= 1 ({examples}, ...), got {self.depth}")
        if self.width < 1:
            raise ValueError(f"WRN width must be a positive integer, got {self.width}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.weight_bits not in (1, 32):
            raise ValueError(f"weight_bits must be 1 or 32, got {self.weight_bits}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be a positive integer, got {self.in_channels}")
        if self.temperature is None and self.norm == "none":
            self.temperature = default_temperature(self.num_classes, self.weight_bits)
        if self.temperature is not None and not 0 < self.temperature < float("inf"):
            raise ValueError(f"temperature must be a positive finite number, got {self.temperature}")

    @property
    def stage_widths(self) -> tuple[int, ...]:
        """Channels of each stage in units of k: (16, 32, 64) for CIFAR, (16, 32, 64, 128) for ImageNet."""
        return (16, 32, 64, 128) if self.arch == "imagenet" else (16, 32, 64)

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // (2 * len(self.stage_widths))

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return tuple(c * self.width for c in self.stage_widths)

    def conv_weight_estimate(self) -> int:
        """Weights of the residual stages' 3x3 convolutions, 2 x 9 x C_s^2 per block (within ~10% of the
        whole network's count): cheap enough to bound a requested size before anything is built."""
        return sum(self.blocks_per_stage * 2 * 9 * c * c for c in self.stage_channels)

    @property
    def bn_affine(self) -> bool:
        """BN layers learn scale and offset only in the ImageNet nets of ICLR 2018."""
        return self.arch == "imagenet"

    @property
    def name(self) -> str:
        design = "bn" if self.norm == "bn" else "srelu"
        if self.arch == "imagenet":  # named like the paper: width relative to ResNet-18's 64 channels
            return f"imagenet-wrn-{self.depth}-{16 * self.width / 64:g}-{design}-{self.weight_bits}bit"
        return f"wrn-{self.depth}-{self.width}-{design}-{self.weight_bits}bit"

    def to_dict(self) -> dict[str, Any]:
        """The config as files store it: one flat JSON object (the reference-layout keys inline)."""
        flat: dict[str, Any] = {}
        for key, value in dataclasses.asdict(self).items():
            if key == "reference":
                flat.update(value)
            else:
                flat[key] = value
        return flat

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WRNConfig":
        """The inverse of ``to_dict``."""
        own = {f.name for f in dataclasses.fields(cls)} - {"reference"}
        unknown = set(data) - own - set(LAYOUT_KEYS)
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        reference = ReferenceLayout(**{k: data[k] for k in LAYOUT_KEYS if k in data})
        return cls(**{k: v for k, v in data.items() if k in own}, reference=reference)
