"""Reading and atomically writing safetensors files: the I/O that checkpoints and packed models share.

safetensors holds only tensors and string metadata, so loading a file never executes code from it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from onebit.errors import CheckpointError
from onebit.atomic import atomic_output


def atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str | Path) -> None:
    """Write a safetensors file atomically (``onebit.atomic.atomic_output``: temp file, fsync, rename)."""
    path = Path(path)
    with atomic_output(path) as tmp:
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        except SafetensorError as exc:       # e.g. the disk filled up; the previous file is kept
            raise CheckpointError(f"{path}: could not be written ({exc})") from None


def missing_file_reason(path: Path) -> str | None:
    """Why ``path`` cannot be read as a model file (None if it is a regular file): absent, or something
    that exists but is not a regular file (a folder, FIFO, device such as /dev/zero, socket)."""
    if path.is_file():
        return None
    if not path.exists():
        return "no such file"
    return "is a folder, not a model file" if path.is_dir() else "is not a regular file (a FIFO, device or socket)"


def check_finite_constants(tensors: dict[str, torch.Tensor]) -> str | None:
    """The first problem with a model's constants, or None: every floating tensor finite, and BN running
    variances >= 0 (a NaN or negative variance makes every prediction NaN, and C code that does not compile)."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"tensor {name!r} holds NaN or infinite values"
        if name.endswith("running_var") and bool((tensor < 0).any()):
            return f"tensor {name!r} holds negative variances"
    return None


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load tensors and metadata of a safetensors file, turning every failure into CheckpointError."""
    path = Path(path)
    reason = missing_file_reason(path)
    if reason:
        raise CheckpointError(f"{path}: {reason}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    return tensors, metadata
