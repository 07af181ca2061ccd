"""The training step and the model set-up that makes it fast on a GPU.

GPU path: bf16 autocast (on CPUs with native bf16 too; ``train/precision.py``), channels_last tensors, ``torch.compile`` of the model (on by default on CUDA),
cuDNN autotuning, SGD with the fused CUDA kernel. On a CPU, channels_last (NHWC) is used too: oneDNN's
convolutions run the training step of WRN-8-1 to WRN-8-2 1.15-1.28x faster in it than in NCHW (whole
epochs ~1.1x; onebit bench layout, docs/performance.md). Each 1-bit layer computes
``c * sign(w)`` once per forward, i.e. once per step. The step returns its loss and hit count as device
tensors: nothing in it waits for the GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from onebit.train.distill import distillation_loss
from onebit.train.distributed import convert_sync_batchnorm, loss_scale, wrap_ddp
from onebit.train.precision import training_autocast


def use_compile(flag: bool | None, device: torch.device) -> bool:
    """``compile=None`` means auto: on for CUDA (where it pays), off on CPU (where compiling is slow)."""
    return device.type == "cuda" if flag is None else bool(flag)


def prepare_model(net: nn.Module, device: torch.device, channels_last: bool = True, world_size: int = 1,
                  compile: bool | None = None) -> tuple[nn.Module, nn.Module]:
    """Move ``net`` to ``device`` and return ``(net, module to train)``.

    ``net`` keeps its parameters (it is what checkpoints save); with ``world_size > 1`` its BN layers are
    synchronised and the training module is DDP over it; with compile on, that module is compiled.
    """
    net = net.to(device)
    if device.type == "cuda":
        # Fixed shapes: let cuDNN time its convolution algorithms and keep the fastest -- unless the caller
        # asked for reproducible results (torch.use_deterministic_algorithms), which autotuning breaks.
        torch.backends.cudnn.benchmark = not torch.are_deterministic_algorithms_enabled()
    if world_size > 1:
        net = convert_sync_batchnorm(net, device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    module = wrap_ddp(net, device) if world_size > 1 else net
    if use_compile(compile, device):
        module = torch.compile(module)
    return net, module


class TrainStep:
    """forward -> cross-entropy (optionally label-smoothed; with a teacher's logits, the distillation loss
    of ``train/distill.py``) -> backward -> SGD update, for one rank's slice of a global batch.

    With ``world_size > 1`` the slice's mean loss is scaled by ``local_n * world / global_n`` so that
    DDP's gradient average is the gradient of the global batch's mean loss.
    """

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                 amp: bool = True, channels_last: bool = True, world_size: int = 1, global_batch: int = 0,
                 label_smoothing: float = 0.0, distill: tuple[float, float] | None = None):
        self.module, self.optimizer, self.device = module, optimizer, device
        self.label_smoothing = label_smoothing
        self.distill = distill                 # (weight, temperature) of the teacher's soft loss
        self.amp = amp
        self.channels_last = channels_last
        self.world_size, self.global_batch = world_size, global_batch

    def __call__(self, x: torch.Tensor, y: torch.Tensor, lr: float,
                 teacher_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with training_autocast(self.device.type, self.amp):
            logits = self.module(x)
        if self.distill is not None and teacher_logits is not None:
            loss = distillation_loss(logits.float(), y, teacher_logits, *self.distill, self.label_smoothing)
        else:
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        scaled = loss
        if self.world_size > 1:
            scaled = loss * loss_scale(len(y), self.global_batch, self.world_size)
        self.optimizer.zero_grad(set_to_none=True)
        scaled.backward()
        self.optimizer.step()
        return loss.detach(), (logits.detach().argmax(1) == y).sum()
