"""`onebit export --format c`: dispatch to the C runtime exporter."""

from __future__ import annotations

import json

from onebit.cli import main
from onebit.export.packed import save_packed
from onebit.models import WRNConfig, build_model


def test_c_format_dispatches_to_the_c_runtime(tmp_path):
    model = build_model(WRNConfig(depth=8, width=1))
    save_packed(model, tmp_path / "m.onebit")
    assert main(["export", str(tmp_path / "m.onebit"), "--format", "c", "-o", str(tmp_path / "c")]) == 0
    info = json.loads((tmp_path / "c" / "onebit_model.json").read_text())
    assert info["name"] == model.config.name
    assert info["weights"] == sum(m.weight.numel() for _, m in model.conv_layers())

