"""Inference: the onebit C runtime against the usual ways to run a net (batch-1 latency, throughput, memory).

For each model (default WRN-14-4 and WRN-20-10, BN-free, 1-bit) and on this machine, in one run:

1. ``torch-bn-fp32``  PyTorch eager, the BN design with 32-bit weights (the usual baseline);
2. ``torch-1bit``     PyTorch eager, the BN-free 1-bit model with its weights expanded to float;
3. ``onnxruntime``    ONNX Runtime, CPU execution provider, on the exported ONNX model;
4. ``c-float``        the onebit C runtime (``onebit export --format c``, static, -march=native), float mode;
5. ``c-int``          the same binary in integer (int16 fixed-point) mode;
6. ``c-int8``         the same binary in 8-bit activation mode.

Every subject runs in its own process: batch-1 latency (median and p95 over ``runs`` single-image calls
after ``runs // 10 + 2`` warm-up calls), batch throughput (median of ``batch_runs`` calls on ``batch``
images), and peak memory = the process's peak resident set (Linux ``VmHWM``: ``ru_maxrss`` of a child
started from Python also counts the parent's pages from before ``exec``). Next to each: MACs, weight
bytes and achieved GFLOP/s (2 x MACs / latency), and the machine's fp32 matmul rate measured in the same
run with the same thread count. Prints a table and writes OUT/inference.json and OUT/inference.png
(latency vs memory).

    onebit bench inference                                  # WRN-14-4 and WRN-20-10, 1 thread
    onebit bench inference wrn-8-1 --runs 10 --batch-runs 2 # quick smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from onebit.errors import ConfigError, DataError, OnebitError
from onebit.export.c_build import host_compiler, run_make
from onebit.export.c_program import lower
from onebit.bench.machine import matmul_gflops
from onebit.bench.models import resolve_model
from onebit.cpus import usable_cpus
from onebit.export.c_contract import EXPORT_INFO
from onebit.export.fixed_point import MAX_CALIBRATION
from onebit.models import WRNConfig, build_model

SUBJECTS = ("torch-bn-fp32", "torch-1bit", "onnxruntime", "c-float", "c-int", "c-int8")
C_MODE_FLAGS = {"float": [], "int": ["--int"], "int8": ["--int8"]}
DEFAULT_MODELS = ("wrn-14-4", "wrn-20-10")


@dataclass
class BenchConfig:
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    subjects: list[str] = field(default_factory=lambda: list(SUBJECTS))
    runs: int = 50
    batch: int = 32
    batch_runs: int = 5
    threads: int = 1
    data_dir: str | None = None
    calibrate: int = 256
    out_dir: Path = Path("bench-results")
    seed: int = 0


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def _run(cmd: list[str], what: str, env: dict | None = None) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        tail = " / ".join((res.stderr or res.stdout).strip().splitlines()[-3:])
        raise OnebitError(f"benchmark subject {what} failed: {tail}")
    return res.stdout


def _python_subject(cmd: list[str], what: str, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = _run([sys.executable, *cmd], what, env)
    return json.loads(out.strip().splitlines()[-1])


def _build_c(src: Path, threads: int) -> tuple[Path, str]:
    """The demo (its Makefile's host build: -march=native, -Werror), statically linked when the C library
    allows it (smallest resident memory)."""
    host_compiler()                                   # one line naming $CC when there is no compiler
    for goal, link in (("static", "static"), ("onebit_demo", "dynamic")):
        res = run_make(src, goal, check=False, THREADS=threads)
        if res.returncode == 0:
            return src / "onebit_demo", link
    raise OnebitError(f"building the C runtime failed: {(res.stderr or res.stdout).strip().splitlines()[-1:]}")


def _c_subject(exe: Path, images: Path, cfg: BenchConfig, mode: str) -> dict:
    args = [str(exe), "--bench", str(cfg.runs), "--batch", str(cfg.batch), "--threads", str(cfg.threads)]
    out = _run(args + C_MODE_FLAGS[mode] + [str(images)], f"c-{mode}")
    lat = re.search(r"latency_ms median (\S+) p95 (\S+) min (\S+)", out)
    thr = re.search(r"throughput_ips (\S+) batch (\d+) median_ms (\S+)", out)
    mem = re.search(r"peak_rss_kb (-?\d+) arena_bytes (\d+)", out)
    kern = re.search(r"kernels (\S+)", out)
    if not (lat and thr and mem):
        raise OnebitError(f"unexpected output of the C demo: {out[:200]!r}")
    return {"latency": {"median": float(lat.group(1)), "p95": float(lat.group(2)), "min": float(lat.group(3))},
            "batch_median_ms": float(thr.group(3)), "peak_rss_kb": int(mem.group(1)),
            "arena_bytes": int(mem.group(2)), "kernels": kern.group(1) if kern else "?"}


def _summary(raw: dict) -> dict:
    lat = raw["latency_ms"]
    return {"latency": {"median": float(np.median(lat)), "p95": _percentile(lat, 95), "min": min(lat)},
            "batch_median_ms": float(np.median(raw["batch_ms"])), "peak_rss_kb": raw["peak_rss_kb"]}


def _images(cfg: BenchConfig) -> tuple[np.ndarray, np.ndarray | None, str]:
    from onebit.data.cifar import load_cifar

    try:
        test = load_cifar("cifar10", cfg.data_dir, train=False, download=False).images[:32].numpy()
    except DataError:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (32, 3, 32, 32), dtype=np.uint8), None, "random images (no CIFAR-10 found)"
    try:
        calib = load_cifar("cifar10", cfg.data_dir, train=True, download=False).images[:cfg.calibrate].numpy()
        note = f"CIFAR-10 test images; integer scales calibrated on {len(calib)} training images"
    except DataError:
        calib = test
        note = "CIFAR-10 test images (no training split found: calibrated on the same 32 test images)"
    return test, calib, note


def bench_model(spec: str, cfg: BenchConfig, images: np.ndarray, calib: np.ndarray | None,
                work: Path, log=print) -> list[dict]:
    """All subjects on one model; one result dict per subject."""
    from onebit.export.c_runtime import export_c
    from onebit.export.packed import save_packed
    from onebit.train.checkpoint import save_checkpoint

    model, label = resolve_model(spec, cfg.seed)
    mcfg = model.config
    prog = lower(model)
    macs, weights = prog.macs(), prog.weight_count()
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "images.npy", images)
    (work / "images.bin").write_bytes(np.ascontiguousarray(images).tobytes())
    common = [str(work / "images.npy"), str(cfg.runs), str(cfg.batch), str(cfg.batch_runs), str(cfg.threads)]
    results = []

    def record(subject: str, stats: dict, weight_bytes: int, **extra) -> None:
        med = stats["latency"]["median"]
        row = {"model": label, "subject": subject, "macs": macs, "weight_bytes": weight_bytes,
               "latency_ms_median": med, "latency_ms_p95": stats["latency"]["p95"],
               "latency_ms_min": stats["latency"]["min"],
               "throughput_ips": cfg.batch / stats["batch_median_ms"] * 1e3,
               "gflops": 2 * macs / med / 1e6, "batch_gflops": 2 * macs * cfg.batch / stats["batch_median_ms"] / 1e6,
               "peak_rss_mb": stats["peak_rss_kb"] / 1024, **extra}
        results.append(row)
        log(f"  {subject:<14} {med:9.2f} ms  p95 {row['latency_ms_p95']:8.2f} ms  "
            f"{row['throughput_ips']:8.1f} img/s  {row['peak_rss_mb']:7.1f} MB")

    for subject in cfg.subjects:
        if subject == "torch-bn-fp32":
            torch.manual_seed(cfg.seed)
            bn_cfg = WRNConfig(depth=mcfg.depth, width=mcfg.width, num_classes=mcfg.num_classes, norm="bn",
                               weight_bits=32)
            path = work / "bn-fp32.safetensors"
            save_checkpoint(path, build_model(bn_cfg).eval(), bn_cfg)
            raw = _python_subject(["-m", "onebit.bench.subject_torch", str(path), *common], subject, cfg.threads)
            record(subject, _summary(raw), 4 * weights)
        elif subject == "torch-1bit":
            path = work / "model.onebit"
            save_packed(model, path)
            raw = _python_subject(["-m", "onebit.bench.subject_torch", str(path), *common, "--bake"], subject,
                                  cfg.threads)
            record(subject, _summary(raw), 4 * weights)
        elif subject == "onnxruntime":
            from onebit.export.onnx_export import export_onnx

            path = work / "model.onnx"
            export_onnx(model, path)
            script = Path(__file__).with_name("subject_ort.py")
            raw = _python_subject([str(script), str(path), *common], subject, cfg.threads)
            record(subject, _summary(raw), 4 * weights, onnx_bytes=path.stat().st_size)
        elif subject in ("c-float", "c-int", "c-int8"):
            src = work / "c"
            if not (src / "onebit_demo").is_file():
                export_c(model, src, calibration_images=calib, calibration_count=cfg.calibrate)
                _, link = _build_c(src, cfg.threads)
                (src / "link.txt").write_text(link)
            exe = src / "onebit_demo"
            mode = subject.split("-")[1]
            if mode != "float" and calib is None:
                log(f"  {subject:<14} skipped: no calibration images")
                continue
            info = json.loads((src / EXPORT_INFO).read_text())
            if mode == "int8" and info.get("arena_bytes_int8") is None:
                log(f"  {subject:<14} skipped: the export has no 8-bit mode")
                continue
            stats = _c_subject(exe, work / "images.bin", cfg, mode)
            weight_bytes = int(re.search(r"ONEBIT_WEIGHT_BYTES (\d+)", (src / "onebit_config.h").read_text()).group(1))
            exe_bytes = exe.stat().st_size
            budget = exe_bytes + stats["arena_bytes"]
            record(subject, stats, weight_bytes, exe_bytes=exe_bytes, arena_bytes=stats["arena_bytes"],
                   link=(src / "link.txt").read_text(), kernels=stats["kernels"],
                   rss_over_budget=stats["peak_rss_kb"] * 1024 / budget,
                   arena_float=info["arena_bytes_float"], arena_int=info["arena_bytes_int"],
                   arena_int8=info.get("arena_bytes_int8"))
        else:
            raise ConfigError(f"unknown benchmark subject {subject!r}; choose from {', '.join(SUBJECTS)}")
    return results


def _ratios(results: list[dict]) -> dict:
    out = {}
    for model in dict.fromkeys(r["model"] for r in results):
        rows = {r["subject"]: r for r in results if r["model"] == model}
        ort, cf, ci, c8 = rows.get("onnxruntime"), rows.get("c-float"), rows.get("c-int"), rows.get("c-int8")
        m = {}
        if ort and cf:
            m["c_float_latency_over_ort"] = cf["latency_ms_median"] / ort["latency_ms_median"]
            m["c_float_peak_rss_over_ort"] = cf["peak_rss_mb"] / ort["peak_rss_mb"]
        if ort and ci:
            m["c_int_latency_over_ort"] = ci["latency_ms_median"] / ort["latency_ms_median"]
        if ort and c8:
            m["c_int8_latency_over_ort"] = c8["latency_ms_median"] / ort["latency_ms_median"]
        if ci and c8:
            m["c_int8_latency_over_c_int"] = c8["latency_ms_median"] / ci["latency_ms_median"]
        if cf:
            m["c_float_rss_over_exe_plus_arena"] = cf["rss_over_budget"]
        if ci:
            m["c_int_rss_over_exe_plus_arena"] = ci["rss_over_budget"]
        if "torch-bn-fp32" in rows and cf:
            bn = rows["torch-bn-fp32"]["latency_ms_median"]
            m["c_float_speedup_over_torch_bn_fp32"] = bn / cf["latency_ms_median"]
        out[model] = m
    return out


def format_table(report: dict) -> str:
    head = (f"{'model':<12} {'subject':<14} {'MMACs':>7} {'weights':>10} {'b1 med ms':>10} {'b1 p95 ms':>10} "
            f"{'GFLOP/s':>8} {'b' + str(report['config']['batch']) + ' img/s':>10} {'GFLOP/s':>8} {'peak MB':>8}")
    lines = [head, "-" * len(head)]
    for r in report["results"]:
        wb = r["weight_bytes"]
        wtxt = f"{wb / 2 ** 20:.2f} MiB" if wb >= 2 ** 20 else f"{wb / 1024:.0f} KiB"
        lines.append(f"{r['model'][:12]:<12} {r['subject']:<14} {r['macs'] / 1e6:7.0f} {wtxt:>10} "
                     f"{r['latency_ms_median']:10.2f} {r['latency_ms_p95']:10.2f} {r['gflops']:8.1f} "
                     f"{r['throughput_ips']:10.1f} {r['batch_gflops']:8.1f} {r['peak_rss_mb']:8.1f}")
    lines.append(f"machine fp32 matmul rate ({report['config']['threads']} thread(s), PyTorch 2048^3): "
                 f"{report['matmul_gflops']:.1f} GFLOP/s")
    for model, m in report["ratios"].items():
        parts = [f"{k} {v:.2f}" for k, v in m.items()]
        lines.append(f"{model}: " + ", ".join(parts))
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7.5, 5))
    markers = ["o", "s", "^", "D", "v"]
    colors = dict(zip(SUBJECTS, ["#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]))
    models = list(dict.fromkeys(r["model"] for r in report["results"]))
    for r in report["results"]:
        mk = markers[models.index(r["model"]) % len(markers)]
        ax.scatter(r["latency_ms_median"], r["peak_rss_mb"], marker=mk, s=60, color=colors.get(r["subject"], "k"),
                   label=f"{r['subject']} ({r['model']})")
        ax.annotate(r["subject"], (r["latency_ms_median"], r["peak_rss_mb"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("batch-1 latency, median (ms)")
    ax.set_ylabel("peak resident memory (MB)")
    ax.set_title(f"Inference on {report['machine']['cpu']} ({report['config']['threads']} thread(s))", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cpu_name() -> str:
    try:
        match = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
        if match:
            return match.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_benchmark(cfg: BenchConfig, log=print, command: str = "") -> dict:
    for s in cfg.subjects:
        if s not in SUBJECTS:
            raise ConfigError(f"unknown benchmark subject {s!r}; choose from {', '.join(SUBJECTS)}")
    if not cfg.subjects:
        raise ConfigError(f"no benchmark subjects given; choose from {', '.join(SUBJECTS)}")
    if cfg.runs < 1 or cfg.batch < 1 or cfg.batch > 64 or cfg.batch_runs < 1 or cfg.threads < 1:
        raise ConfigError("need runs >= 1, 1 <= batch <= 64, batch_runs >= 1, threads >= 1")
    if not 1 <= cfg.calibrate <= MAX_CALIBRATION or cfg.threads > 1024 or cfg.runs > 100_000 \
            or cfg.batch_runs > 100_000:
        raise ConfigError(f"need 1 <= calibrate <= {MAX_CALIBRATION}, threads <= 1024, runs and batch_runs "
                          f"<= 100000 (got calibrate {cfg.calibrate}, threads {cfg.threads})")
    images, calib, note = _images(cfg)
    load_start = os.getloadavg()
    log(f"inference benchmark: {', '.join(cfg.models)}; {note}; load average {load_start[0]:.2f}")
    rate = matmul_gflops(cfg.threads)
    log(f"machine fp32 matmul rate: {rate:.1f} GFLOP/s ({cfg.threads} thread(s))")
    results = []
    with tempfile.TemporaryDirectory(prefix="onebit-bench-") as tmp:
        for spec in cfg.models:
            log(f"{spec}:")
            results += bench_model(spec, cfg, images, calib, Path(tmp) / re.sub(r"\W", "_", spec), log)
    import onnxruntime

    report = {
        "command": command,
        "machine": {"cpu": _cpu_name(), "cpus": len(usable_cpus()), "platform": platform.platform(),
                    "load_average_start": load_start, "load_average_end": os.getloadavg()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "onnxruntime": onnxruntime.__version__},
        "config": {"runs": cfg.runs, "batch": cfg.batch, "batch_runs": cfg.batch_runs, "threads": cfg.threads,
                   "images": note, "models": cfg.models, "subjects": cfg.subjects},
        "matmul_gflops": rate,
        "results": results,
        "ratios": _ratios(results),
    }
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    (cfg.out_dir / "inference.json").write_text(json.dumps(report, indent=1))
    plot(report, cfg.out_dir / "inference.png")
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="wrn-D-K (random BN-free 1-bit weights) or a model file (default: wrn-14-4 wrn-20-10; "
                        "WRN-14-4 has the 2 blocks per stage that the WRN-16-4 of the usual 6n+4 naming has)")
    p.add_argument("--subjects", default=",".join(SUBJECTS), help="comma-separated subset of the subjects")
    p.add_argument("--runs", type=int, default=50, help="timed batch-1 calls per subject (after warm-up)")
    p.add_argument("--batch", type=int, default=32, help="batch size of the throughput measurement (<= 64)")
    p.add_argument("--batch-runs", type=int, default=5, help="timed batch calls per subject")
    p.add_argument("--threads", type=int, default=1, help="threads for every subject")
    p.add_argument("--calibrate", type=int, default=256,
                   help="CIFAR-10 training images that calibrate the integer mode")
    p.add_argument("--data-dir", default=None, help="CIFAR-10 folder (default: $ONEBIT_DATA or cache); "
                                                    "random images if absent")
    p.add_argument("-o", "--out", default="bench-results", help="folder for inference.json and inference.png")


def run(args: argparse.Namespace) -> int:
    cfg = BenchConfig(models=args.models or list(DEFAULT_MODELS),
                      subjects=[s.strip() for s in args.subjects.split(",") if s.strip()],
                      runs=args.runs, batch=args.batch, batch_runs=args.batch_runs, threads=args.threads,
                      data_dir=args.data_dir, calibrate=args.calibrate, out_dir=Path(args.out))
    report = run_benchmark(cfg, command="onebit " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    print()
    print(format_table(report))
    print(f"\nwrote {cfg.out_dir / 'inference.json'} and {cfg.out_dir / 'inference.png'}")
    return 0
