"""The optimizer of the reference recipe: SGD with momentum, weight decay on the latent conv weights only
(McDonnell, ICLR 2018, sec. 2.1; McDonnell et al. 2019, sec. 3.2)."""

from __future__ import annotations

import torch
from torch import nn

from onebit.nn import BinaryConv2d
from onebit.train.config import TrainConfig


def make_optimizer(model: nn.Module, cfg: TrainConfig, fused: bool = False) -> torch.optim.SGD:
    """SGD with momentum; weight decay only on conv weights (the latent full-precision ones).

    ``fused``: one CUDA kernel for the whole update (parameters must be on a GPU).
    """
    conv = [m.weight for m in model.modules() if isinstance(m, BinaryConv2d)]
    conv_ids = {id(p) for p in conv}
    other = [p for p in model.parameters() if id(p) not in conv_ids]
    groups = [{"params": conv, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=False, fused=fused or None)
