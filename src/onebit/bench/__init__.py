"""Benchmarks, each run as ``onebit bench NAME`` (``onebit.commands.bench`` lists them): inference speed and
memory of the C runtime against PyTorch and ONNX Runtime, CPU training throughput, memory layout and thread
settings, Cortex-M firmware, GPU training, and the ImageNet input pipeline. Each module exposes
``add_arguments(parser)`` and ``run(args)``; ``models`` names the models they run, ``machine`` measures the
machine's own matmul rate that they report beside their results.

Kept free of heavy imports: ``subject_ort.py`` runs as a standalone script so that its process holds
only numpy and onnxruntime.
"""
