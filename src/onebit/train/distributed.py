"""Data-parallel training across processes with torch.distributed (launched by ``torchrun``).

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`distributed_context` then joins the
process group (NCCL on GPUs, gloo on CPU) and leaves it at the end. Every rank sees the same global batch
and keeps its own contiguous slice (``data/batches.py``), so the run is the single-process run with the
same global batch:

* DDP averages gradients over ranks, so each rank's loss is its slice's mean times
  ``local_n * world / global_n`` (the average of those is the mean over the global batch, even when the
  slices differ in size, e.g. 125 images over 2 ranks).
* BN layers see the statistics of the global batch (SyncBatchNorm; on CPU :class:`GlooSyncBatchNorm`,
  because PyTorch's SyncBatchNorm kernels exist only for GPUs).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from onebit.errors import ConfigError
from onebit.train.device import select_device


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job (rank 0 of 1 outside ``torchrun``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.barrier()


def env_from_environment() -> DistEnv:
    """Read ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` as set by ``torchrun``."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ConfigError(f"malformed torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {exc}") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"malformed torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return DistEnv(rank, world, local)


def device_for(name: str, env: DistEnv) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` when training on GPUs, else ``name`` as resolved."""
    device = select_device(name)
    if device.type == "cuda" and env.distributed:
        if env.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {env.local_rank} but only {torch.cuda.device_count()} GPUs here; "
                              f"use --nproc-per-node <= the GPU count")
        device = torch.device("cuda", env.local_rank)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return device


@contextmanager
def distributed_context(device_name: str = "auto") -> Iterator[DistEnv]:
    """Join the process group if launched by torchrun (and not already joined); leave it afterwards."""
    env = env_from_environment()
    owns_group = env.distributed and not dist.is_initialized()
    if owns_group:
        backend = "nccl" if device_for(device_name, env).type == "cuda" else "gloo"
        dist.init_process_group(backend)
    try:
        yield env
    finally:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """y = sum over ranks of x; the gradient of a sum over ranks is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch, for CPU (gloo) ranks.

    mean = sum_r sum(x_r) / N,  var = sum_r sum((x_r - mean)^2) / N  with N = sum_r n_r, computed with
    autograd-aware all-reduces (so the backward pass sums the statistics' gradients over ranks, as
    SyncBatchNorm does). Running statistics use the unbiased N / (N - 1) variance, like BatchNorm2d.
    Same parameters and buffers as BatchNorm2d, so checkpoints are interchangeable.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        dims = [0, 2, 3]
        count = all_reduce(torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device))
        mean = all_reduce(x.sum(dims)) / count
        centred = x - mean[None, :, None, None]
        var = all_reduce((centred * centred).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                unbiased = var * (count / (count - 1).clamp_min(1))
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(unbiased.detach(), factor)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Make every BN layer use global-batch statistics (SyncBatchNorm on GPU, GlooSyncBatchNorm on CPU)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = GlooSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats)
            sync.load_state_dict(child.state_dict())
            if child.affine:  # keep the very same Parameter objects (optimizer groups, param order)
                sync.weight, sync.bias = child.weight, child.bias
            sync.train(child.training)
            setattr(model, name, sync)
        else:
            convert_sync_batchnorm(child, device)
    return model


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel over ``model`` (already on ``device``); BN buffers stay in sync via sync BN."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    params = inspect.signature(DistributedDataParallel).parameters
    no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in params  # newer torch
                      else {"broadcast_buffers": False})
    return DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True, **no_buffer_sync)


def loss_scale(local_n: int, global_n: int, world_size: int) -> float:
    """Factor on a rank's mean loss so that DDP's gradient average equals the global-batch mean's gradient."""
    return local_n * world_size / global_n


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over ranks in place (identity outside a process group)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values)
    return values
