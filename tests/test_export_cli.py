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



def test_export_removes_the_temporary_file_of_a_killed_export_but_not_a_live_ones(tmp_path):
    import os

    model = build_model(WRNConfig(depth=8, width=1))
    save_packed(model, tmp_path / "m.onebit")
    out = tmp_path / "copy.onebit"
    orphan = tmp_path / "copy.onebit.999999999.0.tmp"          # no process has this PID
    live = tmp_path / f"copy.onebit.{os.getpid()}.7.tmp"        # a writer that is still running
    other = tmp_path / "other.onebit.999999999.0.tmp"           # another output's file
    for path in (orphan, live, other):
        path.write_bytes(b"partial")
    assert main(["export", str(tmp_path / "m.onebit"), "-o", str(out)]) == 0
    assert out.is_file() and not orphan.exists()
    assert live.read_bytes() == b"partial" and other.read_bytes() == b"partial"
