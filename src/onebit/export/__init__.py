"""Deployment formats of a trained model: packed 1-bit file, ONNX graph, C runtime.

Submodules are imported on use (``onebit.export.onnx_export`` needs onnx, the others do not).
"""

from onebit.export.packed import FORMAT, VERSION, PackedModelError, load_packed, save_packed

__all__ = ["FORMAT", "VERSION", "PackedModelError", "load_packed", "save_packed"]
