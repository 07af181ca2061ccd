"""Long waits show progress on stderr: evaluation batches (a bar when asked, or when stderr is a terminal)."""

from __future__ import annotations

import torch

from onebit.train.evaluation import predict_logits
from onebit.models import WRNConfig, build_model


def test_evaluation_bar_on_request_and_silent_off_a_terminal(capsys):
    model = build_model(WRNConfig(depth=8, width=1))
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    shown = predict_logits(model, images, batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert "evaluating:" in err and "0/3" in err           # the bar over 3 batches (cleared at the end)
    quiet = predict_logits(model, images, batch_size=2, progress=None)   # capsys' stderr is not a terminal
    assert capsys.readouterr().err == ""
    assert torch.equal(shown, quiet)


def test_firmware_runner_returns_output_and_reports_timeouts_and_failures(tmp_path):
    """The QEMU runner (any command here): standard output back, counting the per-image lines; a run past its
    time limit and a non-zero exit each end in one clear error (the exit with the output's last line)."""
    import pytest

    from onebit.errors import OnebitError
    from onebit.export.firmware import _qemu

    out = _qemu(["sh", "-c", "echo 0 3 x; echo 1 7 y; echo done mode int8"], tmp_path, 10, images=2)
    assert out.splitlines() == ["0 3 x", "1 7 y", "done mode int8"]
    with pytest.raises(OnebitError, match="did not finish within 0.5 s"):
        _qemu(["sleep", "5"], tmp_path, 0.5)
    with pytest.raises(OnebitError, match="exited with status 3: no images.bin"):
        _qemu(["sh", "-c", "echo 0 1; echo no images.bin >&2; exit 3"], tmp_path, 10)
