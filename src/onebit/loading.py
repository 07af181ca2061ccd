"""Open any model file onebit writes -- a training checkpoint or a packed ``.onebit`` model -- as a model.

The kind is read from the safetensors metadata ``format`` field, never from the file name, and nothing in
a file is executed (safetensors holds only tensors and strings).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onebit.models import WideResNet
from onebit.models.config import infer_dataset
from onebit.export.packed import FORMAT as PACKED_FORMAT, load_packed
from onebit.errors import CheckpointError
from onebit.rundir import CHECKPOINT
from onebit.train.checkpoint import FORMAT as CHECKPOINT_FORMAT
from onebit.train.checkpoint import load_checkpoint, read_safetensors


def file_format(path: str | Path) -> str:
    """The ``format`` metadata field of a safetensors model file."""
    _, metadata = read_safetensors(path)
    return metadata.get("format", "")


def load_model_file(path: str | Path) -> tuple[WideResNet, dict[str, Any]]:
    """Return ``(model in eval mode on CPU, info)`` for a checkpoint, run directory or packed model."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    fmt = file_format(path)
    if fmt == CHECKPOINT_FORMAT:
        ckpt = load_checkpoint(path)
        return ckpt.build_model(), {"kind": "checkpoint", "path": str(path), "state": ckpt.state,
                                    "train_config": ckpt.train_config}
    if fmt == PACKED_FORMAT:
        model, metadata = load_packed(path)
        train_config = metadata["extra"].get("train_config")
        return model, {"kind": "packed", "path": str(path), **metadata,
                       "train_config": train_config if isinstance(train_config, dict) else {}}
    raise CheckpointError(f"{path}: unknown model file format {fmt!r} (expected a onebit checkpoint "
                          f"or a packed .onebit model)")


def recorded_dataset(model: WideResNet, info: dict[str, Any], given: str | None = None) -> tuple[str, str | None]:
    """(dataset, data folder) of a model file, the one place that answers it: ``given`` (a ``--dataset``
    option) wins, else what the file records (its training config; a packed file's ``extra`` metadata),
    else the dataset the network's shape implies. The data folder is the recorded one (or None)."""
    extra = info.get("extra") or {}
    train_cfg = info.get("train_config") or extra.get("train_config") or {}
    recorded = train_cfg.get("dataset") or extra.get("dataset")
    dataset = given or (recorded if isinstance(recorded, str) else None) or infer_dataset(model.config)
    data_dir = train_cfg.get("data_dir")
    return dataset, data_dir if isinstance(data_dir, str) else None
