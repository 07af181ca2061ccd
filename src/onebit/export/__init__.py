"""Deployment formats of a trained model: packed 1-bit file, ONNX graph, C runtime.

Submodules are imported on use (``onebit.export.onnx_export`` needs onnx, the others do not); the names
below load ``onebit.export.packed`` (and torch) on first use (PEP 562), so that ``onebit.export.targets``
imports without torch for the CLI.
"""

__all__ = ["FORMAT", "VERSION", "PackedModelError", "load_packed", "save_packed"]


def __getattr__(name: str):
    if name in __all__:
        from onebit.export import packed

        return getattr(packed, name)
    raise AttributeError(f"module 'onebit.export' has no attribute {name!r}")
