"""onebit: 1-bit-per-weight wide residual networks with and without batch normalization.

Implements McDonnell et al. 2019, "Single-bit-per-weight deep convolutional neural networks without
batch-normalization layers for embedded systems" (arXiv 1907.06916) and its predecessor, McDonnell,
ICLR 2018 (arXiv 1802.08530).

The names below are imported on first use (PEP 562), so that ``import onebit`` (and the CLI) does not load
torch until a model is needed.
"""

__version__ = "0.1.0"
__all__ = ["BinaryConv2d", "ShiftedReLU", "sign_ste", "WRNConfig", "WideResNet", "build_model", "__version__"]

_LAZY = {"BinaryConv2d": "onebit.nn", "ShiftedReLU": "onebit.nn", "sign_ste": "onebit.nn",
         "WRNConfig": "onebit.models", "WideResNet": "onebit.models", "build_model": "onebit.models"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'onebit' has no attribute {name!r}")
