"""Batch augmentation on the training device, on raw uint8 pixels (McDonnell et al. 2019, sec. 3.1).

Each function takes a whole batch (B, C, H, W) uint8 and a ``torch.Generator`` on the batch's device:
* ``random_translate``: shift by -s..s pixels in x and y, exposed border filled with uniform 0..255 noise;
* ``random_flip``: horizontal flip with p = 0.5;
* ``random_cutout``: an s x s patch (centre uniform over the image, so it may hang over the edge) filled
  with uniform 0..255 noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _noise_like(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 256, x.shape, generator=gen, device=x.device, dtype=torch.uint8)


def random_translate(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate every image by its own (dy, dx) in [-max_shift, max_shift], filling with noise."""
    if max_shift <= 0:
        return x
    b, c, h, w = x.shape
    s = max_shift
    canvas = torch.randint(0, 256, (b, c, h + 2 * s, w + 2 * s), generator=gen, device=x.device,
                           dtype=torch.uint8)
    canvas[:, :, s:s + h, s:s + w] = x
    offsets = torch.randint(0, 2 * s + 1, (2, b), generator=gen, device=x.device)
    rows = (torch.arange(h, device=x.device)[None, :] + offsets[0][:, None])          # (B, H)
    cols = (torch.arange(w, device=x.device)[None, :] + offsets[1][:, None])          # (B, W)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return canvas[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=gen, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_cutout(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Replace a size x size patch per image (centre uniform over the image) by uniform noise."""
    if size <= 0:
        return x
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b,), generator=gen, device=x.device)
    cx = torch.randint(0, w, (b,), generator=gen, device=x.device)
    top, left = cy - size // 2, cx - size // 2
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    in_rows = (ys >= top[:, None]) & (ys < top[:, None] + size)                         # (B, H)
    in_cols = (xs >= left[:, None]) & (xs < left[:, None] + size)                       # (B, W)
    mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]                         # (B, 1, H, W)
    return torch.where(mask, _noise_like(x, gen), x)


@dataclass
class Augmentation:
    """Which augmentations run; each can be switched off (0 / False)."""

    translate: int = 4
    flip: bool = True
    cutout: int = 18

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x = random_translate(x, self.translate, gen)
        if self.flip:
            x = random_flip(x, gen)
        return random_cutout(x, self.cutout, gen)
