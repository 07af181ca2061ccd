"""The module inside the wrappers training puts around a model (DistributedDataParallel, torch.compile)."""

from __future__ import annotations

from torch import nn


def unwrap(module: nn.Module) -> nn.Module:
    """``module`` without its DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    module = getattr(module, "module", module)
    return getattr(module, "_orig_mod", module)
