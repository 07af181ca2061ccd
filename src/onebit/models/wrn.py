"""WRN-d-k in both designs of McDonnell et al. (2019), for 32x32 inputs (``arch='cifar'``) or ImageNet.

* Stem: learned BN on raw 0..255 pixels -> 3x3 conv to 16k channels.
* Three stages of n = (d - 2) / 6 pre-activation basic blocks with 16k, 32k, 64k channels:
  ``x + conv3x3(act(conv3x3_stride(act(x))))``. The first block of stages 2 and 3 downsamples: stride-2
  first conv, shortcut = 3x3 stride-2 average pool, then zero channels concatenated (no parameters).
* ``norm='bn'`` (ICLR 2018): act = BN without scale/offset -> ReLU; head act -> 1x1 conv -> BN -> GAP.
* ``norm='none'`` (2019): act = shifted ReLU max(x, -1); head act -> 1x1 conv -> x(1/T) -> GAP.

``arch='imagenet'`` (McDonnell, ICLR 2018: the ResNet-18 shape widened 2.5x, "18-2.5"):
* Stem: learned input BN -> 7x7 stride-2 conv to 16k channels -> 3x3 stride-2 max pool: ResNet-18's stem
  (our reading: the paper gives the depth and widths, not the stem). The pool comes straight after the
  conv, the first block's pre-activation after it, as in pre-activation ResNets.
* Four stages of n = (d - 2) / 8 blocks with 16k, 32k, 64k, 128k channels (d = 18, k = 10: 160, 320, 640,
  1280 = 2.5 x ResNet-18's 64...512); stages 2-4 downsample exactly as above.
* The BN design uses BN *with* learned scale and offset (the ICLR 2018 ImageNet setting); the head is the
  same 1x1 conv -> BN / x(1/T) -> GAP. WRN-18 with k = 10 has 69,962,720 conv weights (8.7 MB at 1 bit).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from onebit.models.config import (ARCHS, HEAD_POOLS, LAYOUT_KEYS, NORMS, PAD_MODES,  # noqa: F401 (re-exported)
                                  ReferenceLayout, WRNConfig, default_temperature, parse_wrn_name)
from onebit.nn import BinaryConv2d, ShiftedReLU


def make_activation(norm: str, channels: int, affine: bool = False) -> nn.Module:
    """BN (learned scale/offset only if ``affine``) + ReLU for the BN design; shifted ReLU otherwise."""
    if norm == "bn":
        return nn.Sequential(nn.BatchNorm2d(channels, affine=affine), nn.ReLU(inplace=False))
    return ShiftedReLU()


class DownsampleShortcut(nn.Module):
    """3x3 stride-2 average pool (mean over real pixels) followed by concatenated zero channels."""

    def __init__(self, in_channels: int, out_channels: int, pad_mode: str = "symmetric"):
        super().__init__()
        self.extra_channels = out_channels - in_channels
        self.pad_mode = pad_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_mode == "tf_same":
            # TF 'same' on even inputs: 0 before, 1 after; divide by the number of real pixels.
            padded = F.pad(x, (0, 1, 0, 1))
            ones = F.pad(torch.ones_like(x[:1, :1]), (0, 1, 0, 1))
            x = F.avg_pool2d(padded, 3, 2) / F.avg_pool2d(ones, 3, 2)
        else:
            x = F.avg_pool2d(x, 3, 2, padding=1, count_include_pad=False)
        if self.extra_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x


class PreActBlock(nn.Module):
    """``shortcut(x) + conv2(act2(conv1(act1(x))))``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, cfg: WRNConfig):
        super().__init__()
        pad = cfg.reference.pad_mode
        self.act1 = make_activation(cfg.norm, in_channels, cfg.bn_affine)
        self.conv1 = BinaryConv2d(in_channels, out_channels, 3, stride, cfg.weight_bits, pad)
        self.act2 = make_activation(cfg.norm, out_channels, cfg.bn_affine)
        self.conv2 = BinaryConv2d(out_channels, out_channels, 3, 1, cfg.weight_bits, pad)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = DownsampleShortcut(in_channels, out_channels, pad)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.act1(x))
        out = self.conv2(self.act2(out))
        return self.shortcut(x) + out


class WideResNet(nn.Module):
    """WRN-d-k in the BN design (ICLR 2018) or the BN-free design (2019), for CIFAR or ImageNet inputs.

    Input: raw pixel values 0..255, float or uint8, NCHW. Output: class logits.
    """

    def __init__(self, cfg: WRNConfig):
        super().__init__()
        self.config = cfg
        edge_bits = cfg.weight_bits if cfg.binarize_first_last else 32
        channels = cfg.stage_channels
        c1, c_last = channels[0], channels[-1]
        imagenet = cfg.arch == "imagenet"
        self.input_bn = nn.BatchNorm2d(cfg.in_channels, affine=True)
        self.stem_act = nn.ReLU() if cfg.reference.stem_relu else nn.Identity()
        self.stem = BinaryConv2d(cfg.in_channels, c1, 7 if imagenet else 3, 2 if imagenet else 1, edge_bits,
                                 cfg.reference.pad_mode)
        self.stem_pool = nn.MaxPool2d(3, 2, padding=1) if imagenet else nn.Identity()
        blocks = []
        in_c = c1
        for stage, out_c in enumerate(channels):
            for i in range(cfg.blocks_per_stage):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(PreActBlock(in_c, out_c, stride, cfg))
                in_c = out_c
        self.blocks = nn.Sequential(*blocks)
        self.head_act = make_activation(cfg.norm, c_last, cfg.bn_affine)
        self.head = BinaryConv2d(c_last, cfg.num_classes, 1, 1, edge_bits, cfg.reference.pad_mode)
        self.head_bn = nn.BatchNorm2d(cfg.num_classes, affine=cfg.bn_affine) if cfg.norm == "bn" else None
        self.inv_temperature = 1.0 / cfg.temperature if cfg.norm == "none" else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_bn(x.float() if x.dtype == torch.uint8 else x)
        x = self.stem_pool(self.stem(self.stem_act(x)))
        x = self.blocks(x)
        x = self.head(self.head_act(x))
        if self.head_bn is not None:
            x = self.head_bn(x)
        else:
            x = x * self.inv_temperature
        return x.sum(dim=(2, 3)) if self.config.reference.head_pool == "sum" else x.mean(dim=(2, 3))

    def conv_layers(self) -> list[tuple[str, BinaryConv2d]]:
        """All convolutions in forward order, with their qualified names."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, BinaryConv2d)]


def build_model(cfg: WRNConfig | dict[str, Any]) -> WideResNet:
    """Build a WideResNet from a config object or its dict form."""
    if isinstance(cfg, dict):
        cfg = WRNConfig.from_dict(cfg)
    return WideResNet(cfg)
