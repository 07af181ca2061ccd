"""`onebit export --format c`: dispatch to the C runtime exporter when it is installed."""

from __future__ import annotations

import importlib.util
import json

import pytest

from onebit.cli import main
from onebit.export.packed import save_packed
from onebit.models import WRNConfig, build_model


def test_c_format_dispatches_to_the_c_runtime(tmp_path):
    if importlib.util.find_spec("onebit.export.c_runtime") is None:
        pytest.skip("onebit.export.c_runtime is not present")
    model = build_model(WRNConfig(depth=8, width=1))
    save_packed(model, tmp_path / "m.onebit")
    assert main(["export", str(tmp_path / "m.onebit"), "--format", "c", "-o", str(tmp_path / "c")]) == 0
    info = json.loads((tmp_path / "c" / "onebit_model.json").read_text())
    assert info["name"] == model.config.name
    assert info["weights"] == sum(m.weight.numel() for _, m in model.conv_layers())


def test_c_format_without_the_c_runtime_is_a_clear_error(tmp_path, monkeypatch, capsys):
    save_packed(build_model(WRNConfig(depth=8, width=1)), tmp_path / "m.onebit")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onebit.export.c_runtime" else real(name, *a))
    assert main(["export", str(tmp_path / "m.onebit"), "--format", "c", "-o", str(tmp_path / "c")]) == 1
    assert "onebit export: error: the C export" in capsys.readouterr().err
