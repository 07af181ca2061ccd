"""Training speed on a GPU: images/s, model FLOP utilisation, and BN vs shifted ReLU (step time, memory).

Runs the training step exactly as ``onebit train`` does (``train/step.py``: on-device augmentation,
bf16 autocast, channels_last, torch.compile on CUDA by default, fused SGD) on a synthetic uint8 dataset
held on the device, for each model x weight bit-depth x design. Per configuration:

* images/s and ms per step over ``--steps`` timed steps after ``--warmup`` steps (compilation);
* MFU = model FLOPs per training image (forward + backward convolutions and matmuls, counted by
  ``torch.utils.flop_counter``) x images/s / the GPU's dense bf16 peak (table below or ``--peak-tflops``);
* peak GPU memory (``torch.cuda.max_memory_allocated`` over the timed steps).

The baseline is the BN design (ICLR 2018), the subject the shifted-ReLU design (2019) -- the paper's
claim is that dropping BN saves time and memory -- and the ratios BN / shifted ReLU are printed.

    onebit bench gpu-train                                 # WRN-20-10 and WRN-14-4, 1-bit, both designs
    onebit bench gpu-train --device cpu --models wrn-8-1 --steps 3 --warmup 1 --batch-size 32

Depths count as in McDonnell's papers (6n + 2 layers): Zagoruyko & Komodakis's WRN-16-4 (n = 2 blocks per
stage, counting its two 1x1 projection shortcuts) is WRN-14-4 here.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from onebit.bench.machine import matmul_gflops
from onebit.bench.models import model_sizes
from onebit.data.augment import Augmentation
from onebit.data.batches import epoch_batches, steps_per_epoch
from onebit.errors import ConfigError, OnebitError
from onebit.models import WRNConfig, build_model
from onebit.train.config import TrainConfig
from onebit.train.device import select_device
from onebit.train.optimizer import make_optimizer
from onebit.train.step import TrainStep, prepare_model, use_compile

# Dense (not 2:4 sparse) bf16 tensor-core peaks, TFLOP/s, matched in order against the device name.
PEAK_BF16_TFLOPS = (("H200 NVL", 835.0), ("H200", 989.0), ("GH200", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0),
                    ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0), ("A10G", 70.0), ("L4", 121.0))


def gpu_peak_tflops(name: str) -> float | None:
    for key, peak in PEAK_BF16_TFLOPS:
        if key in name:
            return peak
    return None


def train_flops_per_image(cfg: WRNConfig, size: int = 32) -> float:
    """FLOPs of one training step per image (forward + backward), counted on the meta device."""
    with torch.device("meta"):
        model = build_model(cfg)
        x = torch.empty(1, cfg.in_channels, size, size, dtype=torch.uint8)
        y = torch.zeros(1, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(model(x), y).backward()
    return float(counter.get_total_flops())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_us(evt) -> float:
    """Self device time of a profiler event in microseconds (``self_cuda_time_total`` before torch 2.4)."""
    return float(getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0) or 0)


# Kernel names -> kinds, first match wins: Inductor's Triton kernels are named after the ops they fuse
# ("triton_poi_fused_..._convolution_..."), so they are matched before the cuDNN / GEMM names.
KERNEL_KINDS = (("compiled elementwise / reductions (Triton)", ("triton",)),
                ("optimizer (fused SGD)", ("sgd", "multi_tensor")),
                ("batch norm (cuDNN)", ("batch_norm", "bn_fw", "bn_bw", "bn_bn")),
                ("convolution (cuDNN / GEMM)", ("conv", "cudnn", "gemm", "xmma", "cutlass", "wgrad", "dgrad",
                                                "fprop", "sm90", "sm80")))


def profile_steps(run_step, device: torch.device, steps: int, step_ms: float) -> dict:
    """torch.profiler over ``steps`` training steps: the top operators by device time, device time by
    kernel kind, and the share of the wall time the GPU was idle (CPU / launch bound)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            run_step()
        sync(device)
    events = prof.key_averages()
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    try:
        table = events.table(sort_by=sort, row_limit=15)
    except (KeyError, AttributeError):           # older spelling
        table = events.table(sort_by=sort.replace("device", "cuda"), row_limit=15)
    kinds = {name: 0.0 for name, _ in KERNEL_KINDS}
    kinds["other (augmentation, copies, ...)"] = 0.0
    total = 0.0
    for evt in events:
        us = _device_us(evt)
        if us <= 0:
            continue
        total += us
        key = evt.key.lower()
        kind = next((name for name, words in KERNEL_KINDS if any(w in key for w in words)),
                    "other (augmentation, copies, ...)")
        kinds[kind] += us
    busy_ms = total / 1000 / steps
    return {"steps": steps, "device_busy_ms_per_step": busy_ms,
            "gpu_idle_share": max(0.0, 1 - busy_ms / step_ms) if device.type == "cuda" and step_ms else None,
            "device_time_share": {k: v / total for k, v in kinds.items()} if total else {}, "table": table}


def measure(cfg: TrainConfig, device: torch.device, steps: int, warmup: int, profile_steps_if=None) -> dict:
    """Time ``steps`` training steps after ``warmup`` ones; peak memory over the timed steps. If
    ``profile_steps_if(result)`` returns n > 0, also a torch.profiler summary over n further steps."""
    torch.manual_seed(0)
    net, module = prepare_model(build_model(cfg.model_config()), device, cfg.channels_last, 1, cfg.compile)
    optimizer = make_optimizer(net, cfg, fused=device.type == "cuda")
    step = TrainStep(module, optimizer, device, cfg.amp, cfg.channels_last)
    n = cfg.batch_size * 8
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, cfg.num_classes, (n,), device=device)
    augment = Augmentation(cfg.translate, cfg.flip, cfg.cutout)

    def batches():
        epoch = 0
        while True:
            yield from epoch_batches(images, labels, cfg.batch_size, cfg.seed, epoch, augment)
            epoch += 1

    stream = batches()
    assert steps_per_epoch(n, cfg.batch_size) == 8
    t0 = time.perf_counter()
    for _ in range(warmup):
        loss, _ = step(*next(stream), cfg.lr)
    sync(device)
    warmup_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss, _ = step(*next(stream), cfg.lr)
    sync(device)
    seconds = time.perf_counter() - start
    if not torch.isfinite(loss):
        raise OnebitError(f"{cfg.model_config().name}: loss became {float(loss)}")
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    out = {"step_ms": 1000 * seconds / steps, "images_per_s": steps * cfg.batch_size / seconds,
           "peak_mem_mib": peak, "warmup_s": warmup_s, "steps": steps, "warmup": warmup}
    profile = profile_steps_if(out) if profile_steps_if else 0
    if profile:
        out["profile"] = profile_steps(lambda: step(*next(stream), cfg.lr), device, profile, out["step_ms"])
    del net, module, optimizer, step, stream
    torch._dynamo.reset()          # drop this model's compiled graphs (and dynamo's per-code cache entries)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    ap.add_argument("--models", default="wrn-20-10,wrn-14-4", help="comma-separated wrn-D-K names")
    ap.add_argument("--bits", default="1", help="comma-separated weight bit-depths (1, 32)")
    ap.add_argument("--batch-size", type=int, default=125, help="batch size (the reference recipe's 125)")
    ap.add_argument("--steps", type=int, default=50, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation, autotuning)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile the model (default: on for CUDA, off on CPU)")
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast on GPU")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                    help="channels_last tensors on GPU")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="dense bf16 peak of the device in TFLOP/s (default: from the GPU name)")
    ap.add_argument("--matmul", action="store_true",
                    help="also measure the bf16 matmul rate (8192^3; 512^3 fp32 on CPU) as a measured ceiling")
    ap.add_argument("--profile-below", type=float, default=None, metavar="MFU",
                    help="profile (torch.profiler) the --profile-models whose MFU is below this fraction")
    ap.add_argument("--profile-models", default="wrn-20-10", help="models --profile-below applies to")
    ap.add_argument("--profile-steps", type=int, default=5, help="steps the profiler records")
    ap.add_argument("--time-budget", type=float, default=None, metavar="S",
                    help="start no configuration that would end past S seconds (estimated from the last)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    ap.add_argument("--json", default=None, help="also write the results to this file (after every row)")


def run(args: argparse.Namespace) -> int:
    sizes = model_sizes(args.models)
    bit_depths = [b.strip() for b in args.bits.split(",")]
    if any(b not in ("1", "32") for b in bit_depths):
        raise ConfigError(f"--bits {args.bits!r}: comma-separated 1 and 32")
    begin = time.perf_counter()
    device = select_device(args.device)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    table_peak = gpu_peak_tflops(name) if device.type == "cuda" else None
    peak = args.peak_tflops or table_peak
    compiled = use_compile(args.compile, device)
    report = {"device": name, "torch": torch.__version__, "peak_tflops": peak,
              "peak_source": "--peak-tflops" if args.peak_tflops else ("datasheet table (dense bf16)"
                                                                       if table_peak else None),
              "compile": compiled, "amp": args.amp,
              "channels_last": args.channels_last and device.type == "cuda", "batch_size": args.batch_size,
              "rows": [], "pairs": [], "skipped": []}

    def save() -> None:
        if args.json:
            with open(args.json + ".tmp", "w") as f:
                json.dump(report, f, indent=2)
            os.replace(args.json + ".tmp", args.json)

    if args.matmul:
        report["matmul_tflops"] = matmul_gflops(None, 8192 if device.type == "cuda" else 512, 10, device=device,
                                                dtype=torch.bfloat16 if device.type == "cuda" else torch.float32) / 1e3
    print(f"device: {name}; dense bf16 peak: {f'{peak:g} TFLOP/s' if peak else 'unknown (pass --peak-tflops)'}"
          + (f"; measured matmul {report['matmul_tflops']:.1f} TFLOP/s" if args.matmul else "")
          + f"; torch {torch.__version__}; compile={compiled}, amp={report['amp']}, "
          f"channels_last={report['channels_last']}; batch {args.batch_size}, "
          f"{args.steps} timed steps after {args.warmup}")
    header = f"{'model':<26} {'img/s':>9} {'ms/step':>9} {'TFLOP/s':>8} {'MFU':>6} {'peak MiB':>9}"
    print(header)
    profiled = {m.strip().lower() for m in args.profile_models.split(",")}
    last_s = 0.0
    for depth, width, _ in sizes:                    # both designs of each size are measured
        for bits in (int(b) for b in bit_depths):
            pair = {}
            for norm in ("bn", "none"):
                cfg = TrainConfig(depth=depth, width=width, norm=norm, weight_bits=bits,
                                  batch_size=args.batch_size, device=str(device), amp=args.amp,
                                  channels_last=args.channels_last, compile=compiled,
                                  schedule="restarts" if norm == "bn" else "cosine")
                label = cfg.model_config().name
                elapsed = time.perf_counter() - begin
                if args.time_budget is not None and elapsed + last_s > args.time_budget:
                    print(f"{label:<26} skipped: {elapsed:.0f} s used, the last configuration took "
                          f"{last_s:.0f} s, budget {args.time_budget:.0f} s", flush=True)
                    report["skipped"].append(label)
                    save()
                    continue
                t0 = time.perf_counter()
                flops = train_flops_per_image(cfg.model_config())
                profile_this = args.profile_below is not None and f"wrn-{depth}-{width}" in profiled

                def profile_if(r: dict) -> int:
                    rate = flops * r["images_per_s"] / 1e12 / peak if peak else None
                    return args.profile_steps if profile_this and (rate is None or rate < args.profile_below) else 0

                res = measure(cfg, device, args.steps, args.warmup, profile_if)
                achieved = flops * res["images_per_s"] / 1e12
                res.update(model=label, device=name, train_gflop_per_image=flops / 1e9,
                           achieved_tflops=achieved, mfu=achieved / peak if peak else None,
                           mfu_of_matmul=achieved / report["matmul_tflops"] if args.matmul else None,
                           batch_size=args.batch_size, compile=compiled)
                mfu = f"{100 * res['mfu']:5.1f}%" if res["mfu"] is not None else "   n/a"
                mem = f"{res['peak_mem_mib']:9.0f}" if res["peak_mem_mib"] is not None else "      n/a"
                print(f"{res['model']:<26} {res['images_per_s']:9.1f} {res['step_ms']:9.2f} {achieved:8.3f} "
                      f"{mfu} {mem}", flush=True)
                if "profile" in res:
                    prof = res["profile"]
                    shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in prof["device_time_share"].items())
                    idle = prof["gpu_idle_share"]
                    print(f"  profile of {label} (MFU below {100 * args.profile_below:.0f}%): device busy "
                          f"{prof['device_busy_ms_per_step']:.2f} ms/step"
                          + (f", GPU idle {100 * idle:.0f}% of the step" if idle is not None else "")
                          + f"; device time: {shares}\n{prof['table']}", flush=True)
                report["rows"].append(res)
                pair[norm] = res
                last_s = time.perf_counter() - t0
                save()
            if len(pair) < 2:
                continue
            bn, srelu = pair["bn"], pair["none"]
            ratio = {"model": f"wrn-{depth}-{width}", "bits": bits, "step_time_bn_over_srelu":
                     bn["step_ms"] / srelu["step_ms"]}
            line = (f"  BN / shifted ReLU, WRN-{depth}-{width} {bits}-bit: step time "
                    f"{bn['step_ms']:.2f} / {srelu['step_ms']:.2f} ms = {ratio['step_time_bn_over_srelu']:.3f}x")
            if bn["peak_mem_mib"] is not None:
                ratio["peak_mem_bn_over_srelu"] = bn["peak_mem_mib"] / srelu["peak_mem_mib"]
                line += (f"; peak memory {bn['peak_mem_mib']:.0f} / {srelu['peak_mem_mib']:.0f} MiB = "
                         f"{ratio['peak_mem_bn_over_srelu']:.3f}x")
            report["pairs"].append(ratio)
            save()
            print(line, flush=True)
    save()
    return 0
