"""onebit: 1-bit-per-weight wide residual networks with and without batch normalization.

Implements McDonnell et al. 2019, "Single-bit-per-weight deep convolutional neural networks without
batch-normalization layers for embedded systems" (arXiv 1907.06916) and its predecessor, McDonnell,
ICLR 2018 (arXiv 1802.08530).
"""

from onebit.nn import BinaryConv2d, ShiftedReLU, sign_ste
from onebit.models import WRNConfig, WideResNet, build_model

__version__ = "0.1.0"
__all__ = ["BinaryConv2d", "ShiftedReLU", "sign_ste", "WRNConfig", "WideResNet", "build_model", "__version__"]
