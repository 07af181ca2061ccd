"""``onebit bench`` runs end to end (a smoke run: tiny model, few repetitions; no timing is asserted)."""

from __future__ import annotations

import json
import shutil

import pytest

from onebit.bench.inference import BenchConfig, _percentile, format_table, resolve_model
from onebit.cli import main
from onebit.errors import ConfigError


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) on PATH")
def test_bench_smoke(tmp_path, cifar10_dir, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "inference", "wrn-8-1", "--subjects", "onnxruntime,c-float,c-int,c-int8", "--runs", "3",
                 "--batch", "4", "--batch-runs", "1", "--calibrate", "16", "--data-dir", str(cifar10_dir),
                 "-o", str(out)]) == 0
    text = capsys.readouterr().out
    report = json.loads((out / "inference.json").read_text())
    assert (out / "inference.png").stat().st_size > 1000
    rows = {r["subject"]: r for r in report["results"]}
    assert set(rows) == {"onnxruntime", "c-float", "c-int", "c-int8"}
    assert rows["c-int8"]["kernels"] != "portable" or rows["c-int"]["kernels"] == "portable"
    assert rows["c-float"]["macs"] == rows["onnxruntime"]["macs"] == 12_279_808
    assert rows["c-float"]["weight_bytes"] * 8 >= 74_800 and rows["onnxruntime"]["weight_bytes"] == 4 * 74_800
    for r in rows.values():
        assert r["latency_ms_median"] > 0 and r["peak_rss_mb"] > 0 and r["throughput_ips"] > 0
    assert rows["c-float"]["peak_rss_mb"] < rows["onnxruntime"]["peak_rss_mb"]
    assert {"c_float_latency_over_ort", "c_int8_latency_over_ort"} <= set(report["ratios"]["wrn-8-1"])
    assert "c-float" in text and "matmul rate" in text and report["matmul_gflops"] > 0


def test_bench_helpers():
    assert _percentile([5, 1, 2, 3, 4, 6, 7, 8, 9, 10], 95) == 10
    assert _percentile([3.0], 95) == 3.0
    model, label = resolve_model("wrn-8-2")
    assert model.config.width == 2 and label == "wrn-8-2"
    with pytest.raises(ConfigError):
        resolve_model("wrn-16-4")            # depth must be 6n+2 here
    report = {"config": {"batch": 4, "threads": 1}, "matmul_gflops": 10.0, "ratios": {}, "results": [
        {"model": "m", "subject": "c-float", "macs": 2e6, "weight_bytes": 2048, "latency_ms_median": 1.0,
         "latency_ms_p95": 2.0, "gflops": 4.0, "throughput_ips": 900.0, "batch_gflops": 3.6, "peak_rss_mb": 1.5}]}
    assert "c-float" in format_table(report)
    assert BenchConfig().models == ["wrn-14-4", "wrn-20-10"]
