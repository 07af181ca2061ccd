"""Training checkpoints: one safetensors file (no pickle), written atomically.

Tensors: ``model.<state-dict key>``, ``optim.<param index>.momentum_buffer`` and, for runs that average their
weights (``ema_decay``), ``ema.<state-dict key of the averaged model>`` (its ``n_averaged`` too). Metadata (all
strings):
``format = onebit-checkpoint``, ``version``, ``model_config`` (JSON of WRNConfig), ``train_config`` (JSON),
``state`` (JSON: epoch, step, finished, best metrics, ...).
"""

from __future__ import annotations

import json
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from onebit.errors import CheckpointError
from onebit.models import WRNConfig, WideResNet, build_model
from onebit.models.limits import meta_model, parse_model_config
from onebit.nn import unwrap
from onebit.rundir import CHECKPOINT
from onebit.safetensors_io import atomic_save, check_finite_constants, read_safetensors

FORMAT = "onebit-checkpoint"
# Version 2: written since CPUs train in bf16 with amp on. A version-1 checkpoint's amp = true meant bf16 on
# a GPU but float32 on a CPU (Trainer.resume continues such a CPU run in float32).
VERSION = "2"
READABLE_VERSIONS = ("1", "2")


@dataclass
class Checkpoint:
    model_config: WRNConfig
    train_config: dict[str, Any]
    state: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, torch.Tensor]
    average_state: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    version: str = VERSION

    def build_model(self) -> WideResNet:
        """A model with these weights, in eval mode, on the CPU: the weight average where the run keeps
        one (what its metrics describe), else the trained weights."""
        model = build_model(self.model_config)
        state = ({k[len("module."):]: v for k, v in self.average_state.items() if k.startswith("module.")}
                 if self.average_state else self.model_state)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint weights do not match its model config: {exc}") from None
        return model.eval()


def save_checkpoint(path: str | Path, model: nn.Module, model_config: WRNConfig,
                    optimizer: torch.optim.Optimizer | None = None,
                    train_config: dict[str, Any] | None = None, state: dict[str, Any] | None = None,
                    average: nn.Module | None = None) -> None:
    """Atomically write model weights, SGD momentum buffers, the weight average (a
    ``torch.optim.swa_utils.AveragedModel``, if any) and JSON metadata to ``path``."""
    model = unwrap(model)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if average is not None:
        tensors.update({f"ema.{k}": v for k, v in average.state_dict().items()})
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
    """Read a checkpoint file (or a run directory holding ``onebit.rundir.CHECKPOINT``)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a onebit checkpoint (format={metadata.get('format')!r})")
    if metadata.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{path}: checkpoint version {metadata.get('version')!r} is not supported "
                              f"(this onebit reads versions {', '.join(READABLE_VERSIONS)})")
    try:
        model_config = parse_model_config(_json_field(metadata, "model_config", None))
        train_config = _json_field(metadata, "train_config", "{}")
        state = _check_state(_json_field(metadata, "state", "{}"))
        if not isinstance(train_config, dict):
            raise ValueError(f"train_config is not a JSON object (got {type(train_config).__name__})")
        model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        optim_state = {k[len("optim."):]: v for k, v in tensors.items() if k.startswith("optim.")}
        average_state = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
        expected = {k: tuple(v.shape) for k, v in meta_model(model_config, len(tensors)).state_dict().items()}
    except ValueError as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata: {exc}") from None
    if set(expected) != set(model_state):
        odd = sorted(set(expected) ^ set(model_state))
        raise CheckpointError(f"{path}: weights do not match its model config {model_config.name} "
                              f"({len(odd)} tensor names differ, e.g. {odd[0]!r})")
    for key, shape in expected.items():
        if tuple(model_state[key].shape) != shape:
            raise CheckpointError(f"{path}: tensor model.{key} has shape {list(model_state[key].shape)}, "
                                  f"expected {list(shape)} for {model_config.name}")
    if average_state:
        want = {f"module.{k}": tuple(v.shape) for k, v in model_state.items()} | {"n_averaged": ()}
        if {k: tuple(v.shape) for k, v in average_state.items()} != want:
            raise CheckpointError(f"{path}: its weight average (ema.*) does not match its model's weights")
    problem = check_finite_constants({**model_state, **{f"optim.{k}": v for k, v in optim_state.items()},
                                      **{f"ema.{k}": v for k, v in average_state.items()}})
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    return Checkpoint(model_config, train_config, state, model_state, optim_state, average_state,
                      metadata["version"])


def _json_field(metadata: dict[str, str], key: str, default: str | None) -> Any:
    text = metadata.get(key, default)
    if text is None:
        raise ValueError(f"field {key!r} is missing")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"field {key!r} is not valid JSON ({exc})") from None


def _check_state(state: Any) -> dict[str, Any]:
    """The training state with every field of the right type (missing ones take their start values)."""
    if not isinstance(state, dict):
        raise ValueError(f"state is not a JSON object (got {type(state).__name__})")
    state = {"epoch": 0, "step": 0, "finished": False, "best": {}, "elapsed_s": 0.0, **state}
    for key in ("epoch", "step"):
        value = state[key]
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 40:
            raise ValueError(f"state.{key} = {value!r} is not a count")
    if not isinstance(state["finished"], bool):
        raise ValueError(f"state.finished = {state['finished']!r} is not true/false")
    if not isinstance(state["best"], dict):
        raise ValueError(f"state.best = {state['best']!r} is not a JSON object")
    elapsed = state["elapsed_s"]
    if not isinstance(elapsed, (int, float)) or isinstance(elapsed, bool) or not 0 <= elapsed < float("inf"):
        raise ValueError(f"state.elapsed_s = {elapsed!r} is not a duration")
    state["elapsed_s"] = float(elapsed)
    return state


def restore_optimizer(optimizer: torch.optim.Optimizer, optimizer_state: dict[str, torch.Tensor]) -> None:
    """Put saved momentum buffers back into an SGD optimizer built over the same parameters."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for key, buf in optimizer_state.items():
        index = int(key.split(".")[0])
        if index >= len(params) or params[index].shape != buf.shape:
            raise CheckpointError(f"optimizer state {key} does not match the model")
        # In the parameter's memory layout (channels_last by default): the fused SGD kernels pair parameter,
        # gradient and buffer elements by storage offset, so a buffer in another layout is mis-updated.
        optimizer.state[params[index]]["momentum_buffer"] = torch.empty_like(params[index]).copy_(buf)
