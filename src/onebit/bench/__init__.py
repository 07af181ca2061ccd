"""Benchmarks: inference speed and memory of the onebit C runtime against PyTorch and ONNX Runtime
(``onebit bench``), training throughput, and the ImageNet input pipeline; ``machine`` measures the
machine's own fp32 matmul rate that each of them reports beside its results.

Kept free of heavy imports: ``subject_ort.py`` runs as a standalone script so that its process holds
only numpy and onnxruntime. The scripts in the repository's ``bench/`` folder call these modules.
"""
