"""Benchmarks: inference speed and memory of the onebit C runtime against PyTorch and ONNX Runtime.

Kept free of heavy imports: ``subject_ort.py`` runs as a standalone script so that its process holds
only numpy and onnxruntime.
"""
