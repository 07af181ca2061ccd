"""The benchmarks behind ``onebit bench`` run end to end on tiny settings and report consistent figures
(their ratios are computed from the numbers they print; no timing is asserted); bad options get one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def bench(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``onebit bench ARGS`` in its own process, as a user runs it (benchmarks set the thread count)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "onebit", "bench", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def run_bench(*args: str, timeout: int = 300) -> str:
    proc = bench(*args, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_cpu_channels_last_reports_both_layouts_and_their_ratio(tmp_path):
    out = run_bench("layout", "--models", "wrn-8-1,wrn-8-1-bn", "--steps", "1", "--repeats", "2",
                    "--batch-size", "8", "--threads", "1", "--json", str(tmp_path / "r.json"))
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["threads"] == 1 and [r["model"] for r in result["results"]] == ["wrn-8-1-srelu", "wrn-8-1-bn"]
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("wrn-")}
    for r in result["results"]:
        assert len(r["nchw_images_per_s"]) == len(r["nhwc_images_per_s"]) == 2
        assert r["ratio_best"] == pytest.approx(max(r["nhwc_images_per_s"]) / max(r["nchw_images_per_s"]))
        assert rows[r["model"]][3] == f"{r['ratio_best']:.2f}x"


def test_train_throughput_measures_both_formats_and_their_ratio(tmp_path):
    for layout in ("--channels-last", "--no-channels-last"):
        out = run_bench("train", "--models", "wrn-8-1", "--steps", "1", "--repeats", "2",
                        "--batch-size", "8", "--threads", "1", layout, "--json", str(tmp_path / "t.json"))
        r = json.loads((tmp_path / "t.json").read_text())
        assert r["channels_last"] is (layout == "--channels-last") and set(r["matmul_gflops"]) == {"fp32", "bf16"}
        [row] = r["results"]
        assert row["model"] == "wrn-8-1-srelu-1bit" and set(row["formats"]) == {"fp32", "bf16"}
        for fmt, f in row["formats"].items():
            assert len(f["full_step_ms_each_repeat"]) == 2 and f["full_step_ms"] == min(f["full_step_ms_each_repeat"])
            assert f["full_vs_matmul"] == pytest.approx(f["full_gflops"] / r["matmul_gflops"][fmt])
            assert f["full_images_per_s"] == pytest.approx(8 / (f["full_step_ms"] / 1e3))
            assert f["memory"]["peak_rss_mb"] >= f["memory"]["above_start_mb"] >= -1     # MiB
            assert 0.1 < f["saved_for_backward_mb"] < 10      # batch 8 of WRN-8-1: ~4.7 MiB in fp32
            assert f"peak RSS {f['memory']['peak_rss_mb']:.0f} MiB" in out
        assert row["bf16_vs_fp32"] == pytest.approx(row["formats"]["bf16"]["full_images_per_s"]
                                                    / row["formats"]["fp32"]["full_images_per_s"])
        assert f"bf16 / fp32 full-step images/s  {row['bf16_vs_fp32']:.2f}x" in out


def test_saved_for_backward_counts_each_saved_storage_once():
    import torch

    from onebit.bench.train_throughput import saved_for_backward_bytes

    x = torch.ones(1000, requires_grad=True)

    def step():
        y = x * 2                   # mul by a constant saves nothing of x
        (y.exp() * y.exp()).sum().backward()      # exp saves its output (twice, 4,000 bytes each), mul both

    assert saved_for_backward_bytes(step) == 2 * 4000


def test_peak_memory_is_what_the_call_needed_beyond_the_memory_resident_before():
    import numpy as np

    from onebit.bench.machine import peak_memory_of

    big = peak_memory_of(lambda n: np.ones(n, dtype=np.uint8).sum(), 200 * 2**20)   # touches 200 MiB, frees it
    small = peak_memory_of(lambda: None)
    assert 190 <= big["above_start_mb"] <= 260 and big["peak_rss_mb"] >= big["above_start_mb"]
    assert small["above_start_mb"] < 5               # the 200 MiB were returned: the peak was reset before


@pytest.mark.parametrize("args, message", [
    (["train", "--models", "wrn-8"], "--models: 'wrn-8' is not a model name"),
    (["train", "--models", "wrn-7-1"], "--models: wrn-7-1: WRN depth must be 6n+2"),
    (["train", "--formats", "fp16"], "--formats: 'fp16'"),
    (["train", "--steps", "0"], "1 <= --steps"),
    (["train", "--stepz", "1"], "unrecognized arguments: --stepz"),
    (["layout", "--models", "8-1"], "--models: '8-1' is not a model name"),
    (["layout", "--models", "wrn-8-1-x"], "--models: 'wrn-8-1-x' is not a model name"),
    (["gpu-train", "--bits", "2"], "--bits '2'"),
    (["firmware", "sizes", "wrn-8-1", "--targets", "cortex-a53"], "--targets 'cortex-a53': choose from"),
    (["firmware", "sizes", "wrn-8-1", "--modes", "int4"], "--modes 'int4': choose from int, int8, float"),
    (["firmware", "accuracy", "wrn-8-1", "--modes", "float"], "--modes 'float': choose from int, int8"),
    (["imagenet-loader", "--workers", "0"], "1 <= --workers"),
    (["nope"], "invalid choice: 'nope'"),
])
def test_bad_benchmark_options_get_one_line(args, message):
    proc = bench(*args, timeout=120)
    assert proc.returncode in (1, 2) and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr
    assert proc.stderr.startswith("onebit bench")


def test_every_benchmark_has_help_and_the_listing_names_them_all():
    from onebit.commands.bench import BENCHMARKS, benchmark_parser

    listing = run_bench("--help")
    for name in BENCHMARKS:
        assert f"  {name} " in listing
        parser, module = benchmark_parser(name)
        assert parser.prog == f"onebit bench {name}" and module.__doc__.split()[0] in parser.format_help()


def test_thread_policy_measures_every_setting_idle_and_busy(tmp_path, tiny_cifar10):
    out = run_bench("threads", "--data-dir", str(tiny_cifar10), "--limit", "200",
                    "--json", str(tmp_path / "p.json"), timeout=600)
    result = json.loads((tmp_path / "p.json").read_text())
    assert list(result["results"]) == ["idle", "one busy process"]
    for condition, rows in result["results"].items():
        assert "1 thread" in rows and "onebit default" in rows and len(rows) == 4
        assert all(r["wall_s"] > 0 and r["images_per_s"] > 0 for r in rows.values())
        assert 1 <= rows["onebit default"]["default_would_choose"] <= result["cpus"]
        best = min(r["wall_s"] for r in rows.values())
        assert f"{rows['1 thread']['wall_s'] / best:7.2f}x" in out
