"""1-bit convolution and shifted ReLU (McDonnell et al. 2019)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from onebit.nn.binarize import he_scale, sign_ste


class BinaryConv2d(nn.Conv2d):
    """Conv2d whose effective weight is ``c * sign(w)`` (``weight_bits=1``) or ``w`` (``weight_bits=32``).

    ``c = sqrt(2 / (kh * kw * C_in))`` is fixed, not learned; the latent full-precision ``w`` is He-normal
    initialised and is what SGD and weight decay update (McDonnell, ICLR 2018, sec. 2.1). No bias.
    ``pad_mode='tf_same'`` pads stride-2 convolutions like TensorFlow's 'same' (0 before, 1 after on even
    inputs) instead of symmetrically; it exists for the reference models' Keras weights.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 weight_bits: int = 1, pad_mode: str = "symmetric"):
        if weight_bits not in (1, 32):
            raise ValueError(f"weight_bits must be 1 or 32, got {weight_bits}")
        if pad_mode not in ("symmetric", "tf_same"):
            raise ValueError(f"pad_mode must be 'symmetric' or 'tf_same', got {pad_mode!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         padding=kernel_size // 2, bias=False)
        self.weight_bits = weight_bits
        self.pad_mode = pad_mode
        self.scale = he_scale(kernel_size, kernel_size, in_channels)
        nn.init.normal_(self.weight, 0.0, self.scale)

    def effective_weight(self) -> torch.Tensor:
        """The weight the convolution uses: ``c * sign(w)`` for 1-bit layers, else ``w``."""
        if self.weight_bits == 1:
            return sign_ste(self.weight, self.scale)
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.effective_weight()
        if self.pad_mode == "tf_same" and self.stride[0] > 1 and self.kernel_size[0] > 1:
            x = tf_same_pad(x, self.kernel_size[0], self.stride[0])
            return F.conv2d(x, weight, None, self.stride, 0)
        return F.conv2d(x, weight, None, self.stride, self.padding)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", weight_bits={self.weight_bits}, scale={self.scale:.5f}"


def tf_same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Zero-pad like TensorFlow 'same': total pad split with the extra row/column after."""
    size = x.shape[-1]
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    before = total // 2
    return F.pad(x, (before, total - before, before, total - before))


class _ShiftedReLUFunction(torch.autograd.Function):
    """``max(x, -1)`` with clamp_min's gradient, ``dy/dx = [x > -1]``, computed by ReLU's backward kernel
    (``threshold_backward``) instead of clamp_min's slower ``where(x > -1, grad, 0)`` (bf16 on the CPU:
    docs/performance.md). Same values, bit for bit."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.clamp_min(x, -1.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad, x, -1.0)


def _exporting() -> bool:
    """Inside torch.export (ONNX export traces the plain clamp); torch < 2.5 has no such query."""
    return getattr(torch.compiler, "is_exporting", lambda: False)()


class ShiftedReLU(nn.Module):
    """Shifted ReLU ``y = max(x, -1)``, replacing every BN + ReLU pair (McDonnell et al. 2019, eq. 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad and not _exporting():
            return _ShiftedReLUFunction.apply(x)
        return torch.clamp_min(x, -1.0)
