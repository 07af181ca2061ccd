"""Reading and atomically writing safetensors files: the I/O that checkpoints and packed models share.

safetensors holds only tensors and string metadata, so loading a file never executes code from it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from onebit.errors import CheckpointError
from onebit.rundir import atomic_output


def atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str | Path) -> None:
    """Write a safetensors file atomically (``onebit.rundir.atomic_output``: temp file, fsync, rename)."""
    path = Path(path)
    with atomic_output(path) as tmp:
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        except SafetensorError as exc:       # e.g. the disk filled up; the previous file is kept
            raise CheckpointError(f"{path}: could not be written ({exc})") from None


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load tensors and metadata of a safetensors file, turning every failure into CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    return tensors, metadata
