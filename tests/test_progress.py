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
