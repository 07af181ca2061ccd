"""An unpickler that only rebuilds numpy arrays, so a tampered CIFAR batch file cannot run code."""

from __future__ import annotations

import io
import pickle
from typing import Any

ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Refuses every global except the few numpy constructors the official CIFAR files use."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name} in data file")


def safe_load(data: bytes) -> Any:
    """Unpickle ``data`` (protocol-2 CIFAR format, latin1 strings) allowing only numpy arrays."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
