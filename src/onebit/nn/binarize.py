"""The weight quantizer of McDonnell (ICLR 2018, sec. 2.1) and McDonnell et al. (2019, sec. 2).

Forward:  w_eff = c * sign(w),  sign(0) = +1,  c = sqrt(2 / (kh * kw * C_in))  (He-init std, fixed).
Backward: dL/dw = dL/dw_eff  (straight-through, unscaled, unclipped).
"""

from __future__ import annotations

import math

import torch


def he_scale(kernel_h: int, kernel_w: int, in_channels: int) -> float:
    """The fixed per-layer scale c = sqrt(2 / (kh * kw * C_in))."""
    return math.sqrt(2.0 / (kernel_h * kernel_w * in_channels))


def sign_bits(weight: torch.Tensor) -> torch.Tensor:
    """Boolean sign bits of ``weight``: True where w >= 0 (so sign(0) = +1)."""
    return weight >= 0


def sign_ste(weight: torch.Tensor, scale: float) -> torch.Tensor:
    """Return ``scale * sign(weight)`` whose gradient w.r.t. ``weight`` is the identity.

    Written as ``w + (c*sign(w) - w).detach()``: the value is c*sign(w) and autograd sees only
    the identity term, which is exactly the unscaled straight-through estimator.
    """
    binary = torch.where(sign_bits(weight), scale, -scale).to(weight.dtype)
    return weight + (binary - weight).detach()
