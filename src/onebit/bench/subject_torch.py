"""Benchmark subject: PyTorch eager on a model file (checkpoint or .onebit).

``python -m onebit.bench.subject_torch MODEL IMAGES.npy RUNS BATCH BATCH_RUNS THREADS [--bake]`` prints
one JSON line: per-run batch-1 and batch latencies in ms and the process's peak RSS. ``--bake`` replaces
every 1-bit weight by its float value ``c * sign(w)`` once, so the timed forward is a plain float
convolution network (the 1-bit model run the usual way).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from onebit.bench.subject_ort import peak_rss_kb


@torch.inference_mode()
def main(argv: list[str]) -> None:
    bake = "--bake" in argv
    path, images_path, runs, batch, batch_runs, threads = [a for a in argv if a != "--bake"]
    runs, batch, batch_runs, threads = int(runs), int(batch), int(batch_runs), int(threads)
    torch.set_num_threads(threads)
    from onebit.loading import load_model_file

    model, _ = load_model_file(path)
    if bake:
        from onebit.export.onnx_export import with_baked_weights

        model = with_baked_weights(model)
    model.eval()
    images = torch.from_numpy(np.load(images_path)).float()
    warm = runs // 10 + 2
    lat = []
    for r in range(warm + runs):
        x = images[r % len(images)][None]
        t0 = time.perf_counter()
        model(x)
        if r >= warm:
            lat.append((time.perf_counter() - t0) * 1e3)
    xb = images[torch.arange(batch) % len(images)].contiguous()
    blat = []
    for r in range(1 + batch_runs):
        t0 = time.perf_counter()
        model(xb)
        if r >= 1:
            blat.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({"latency_ms": lat, "batch_ms": blat, "peak_rss_kb": peak_rss_kb(), "threads": threads,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main(sys.argv[1:])
