"""Benchmark subject: ONNX Runtime (CPU execution provider) on an exported ONNX model.

Run as a file (``python subject_ort.py MODEL.onnx IMAGES.npy RUNS BATCH BATCH_RUNS THREADS``), not as a
module of the onebit package, so that the process holds only numpy and onnxruntime and its peak memory is
ONNX Runtime's. Prints one JSON line: per-run batch-1 latencies and batch latencies in ms, peak RSS.
"""

import json
import sys
import time

import numpy as np


def status_kb(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (``VmRSS``, ``VmHWM``, ...); None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_kb() -> int:
    """VmHWM of this process (peak resident set since exec), else ru_maxrss."""
    peak = status_kb("VmHWM")
    if peak is not None:
        return peak
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def main(argv: list[str]) -> None:
    import onnxruntime as ort       # here, so that importing peak_rss_kb does not load onnxruntime

    path, images_path, runs, batch, batch_runs, threads = argv
    runs, batch, batch_runs, threads = int(runs), int(batch), int(batch_runs), int(threads)
    images = np.load(images_path).astype(np.float32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    single = [images[i % len(images)][None] for i in range(len(images))]
    warm = runs // 10 + 2
    lat = []
    for r in range(warm + runs):
        x = single[r % len(single)]
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        if r >= warm:
            lat.append((time.perf_counter() - t0) * 1e3)
    xb = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))
    blat = []
    for r in range(1 + batch_runs):
        t0 = time.perf_counter()
        sess.run(None, {name: xb})
        if r >= 1:
            blat.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({"latency_ms": lat, "batch_ms": blat, "peak_rss_kb": peak_rss_kb(),
                      "threads": threads, "onnxruntime": ort.__version__}))


if __name__ == "__main__":
    main(sys.argv[1:])
