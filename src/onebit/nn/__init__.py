"""Layers: 1-bit convolution with a straight-through gradient and the shifted ReLU."""

from onebit.nn.binarize import he_scale, sign_ste
from onebit.nn.layers import BinaryConv2d, ShiftedReLU
from onebit.nn.wrappers import unwrap

__all__ = ["he_scale", "sign_ste", "BinaryConv2d", "ShiftedReLU", "unwrap"]
