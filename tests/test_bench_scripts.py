"""The training benchmarks under bench/ run end to end on tiny settings and report consistent figures
(their ratios are computed from the numbers they print; no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_bench(script: str, *args: str, timeout: int = 300) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_cpu_channels_last_reports_both_layouts_and_their_ratio(tmp_path):
    out = run_bench("cpu_channels_last.py", "--models", "8-1", "8-1-bn", "--steps", "1", "--repeats", "2",
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
        out = run_bench("train_throughput.py", "--models", "wrn-8-1", "--steps", "1", "--repeats", "2",
                        "--batch-size", "8", "--threads", "1", layout, "--json", str(tmp_path / "t.json"))
        r = json.loads((tmp_path / "t.json").read_text())
        assert r["channels_last"] is (layout == "--channels-last") and set(r["matmul_gflops"]) == {"fp32", "bf16"}
        [row] = r["results"]
        assert row["model"] == "wrn-8-1-srelu-1bit" and set(row["formats"]) == {"fp32", "bf16"}
        for fmt, f in row["formats"].items():
            assert len(f["full_step_ms_each_repeat"]) == 2 and f["full_step_ms"] == min(f["full_step_ms_each_repeat"])
            assert f["full_vs_matmul"] == pytest.approx(f["full_gflops"] / r["matmul_gflops"][fmt])
            assert f["full_images_per_s"] == pytest.approx(8 / (f["full_step_ms"] / 1e3))
        assert row["bf16_vs_fp32"] == pytest.approx(row["formats"]["bf16"]["full_images_per_s"]
                                                    / row["formats"]["fp32"]["full_images_per_s"])
        assert f"bf16 / fp32 full-step images/s  {row['bf16_vs_fp32']:.2f}x" in out


@pytest.mark.parametrize("args", [["--models", "wrn-8"], ["--models", "wrn-7-1"], ["--formats", "fp16"],
                                  ["--steps", "0"]])
def test_train_throughput_refuses_bad_options_in_one_line(args):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "train_throughput.py"), *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "train_throughput: error:" in proc.stderr


def test_thread_policy_measures_every_setting_idle_and_busy(tmp_path, tiny_cifar10):
    out = run_bench("thread_policy.py", "--data-dir", str(tiny_cifar10), "--limit", "200",
                    "--json", str(tmp_path / "p.json"), timeout=600)
    result = json.loads((tmp_path / "p.json").read_text())
    assert list(result["results"]) == ["idle", "one busy process"]
    for condition, rows in result["results"].items():
        assert "1 thread" in rows and "onebit default" in rows and len(rows) == 4
        assert all(r["wall_s"] > 0 and r["images_per_s"] > 0 for r in rows.values())
        assert 1 <= rows["onebit default"]["default_would_choose"] <= result["cpus"]
        best = min(r["wall_s"] for r in rows.values())
        assert f"{rows['1 thread']['wall_s'] / best:7.2f}x" in out


@pytest.mark.parametrize("spec", ["8", "8-1-x", "7-1"])
def test_cpu_channels_last_rejects_a_bad_model_in_one_line(spec):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "cpu_channels_last.py"), "--models", spec,
                           "--steps", "1", "--repeats", "1"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("cpu_channels_last.py: error: --models")
