"""Training checkpoints: one safetensors file (no pickle), written atomically.

Tensors: ``model.<state-dict key>`` and ``optim.<param index>.momentum_buffer``. Metadata (all strings):
``format = onebit-checkpoint``, ``version``, ``model_config`` (JSON of WRNConfig), ``train_config`` (JSON),
``state`` (JSON: epoch, step, finished, best metrics, ...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from onebit.models import WRNConfig, WideResNet, build_model
from onebit.nn import unwrap
from onebit.safetensors_io import CheckpointError, atomic_save, read_safetensors

FORMAT = "onebit-checkpoint"
VERSION = "1"
CHECKPOINT_NAME = "checkpoint.safetensors"


@dataclass
class Checkpoint:
    model_config: WRNConfig
    train_config: dict[str, Any]
    state: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, torch.Tensor]

    def build_model(self) -> WideResNet:
        """A model with these weights, in eval mode, on the CPU."""
        model = build_model(self.model_config)
        try:
            model.load_state_dict(self.model_state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint weights do not match its model config: {exc}") from None
        return model.eval()


def save_checkpoint(path: str | Path, model: nn.Module, model_config: WRNConfig,
                    optimizer: torch.optim.Optimizer | None = None,
                    train_config: dict[str, Any] | None = None, state: dict[str, Any] | None = None) -> None:
    """Atomically write model weights, SGD momentum buffers and JSON metadata to ``path``."""
    model = unwrap(model)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if optimizer is not None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for i, p in enumerate(params):
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[f"optim.{i}.momentum_buffer"] = buf
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": json.dumps(model_config.to_dict()),
        "train_config": json.dumps(train_config or {}),
        "state": json.dumps(state or {}),
    }
    atomic_save(tensors, metadata, path)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint file (or a run directory holding ``checkpoint.safetensors``)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a onebit checkpoint (format={metadata.get('format')!r})")
    if metadata.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {metadata.get('version')!r} is not supported "
                              f"(this onebit reads version {VERSION})")
    try:
        model_config = WRNConfig.from_dict(json.loads(metadata["model_config"]))
        train_config = json.loads(metadata.get("train_config", "{}"))
        state = json.loads(metadata.get("state", "{}"))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata ({exc})") from None
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    optim_state = {k[len("optim."):]: v for k, v in tensors.items() if k.startswith("optim.")}
    return Checkpoint(model_config, train_config, state, model_state, optim_state)


def restore_optimizer(optimizer: torch.optim.Optimizer, optimizer_state: dict[str, torch.Tensor]) -> None:
    """Put saved momentum buffers back into an SGD optimizer built over the same parameters."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for key, buf in optimizer_state.items():
        index = int(key.split(".")[0])
        if index >= len(params) or params[index].shape != buf.shape:
            raise CheckpointError(f"optimizer state {key} does not match the model")
        # In the parameter's memory layout (channels_last on GPUs): the fused SGD kernels pair parameter,
        # gradient and buffer elements by storage offset, so a buffer in another layout is mis-updated.
        optimizer.state[params[index]]["momentum_buffer"] = torch.empty_like(params[index]).copy_(buf)
