"""The committed microcontroller model (models/cifar10-mcu.onebit) is what the cifar10-mcu preset trains,
fits the MLPerf Tiny reference's parameter memory at 1 bit per weight, and is as accurate as recorded."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from onebit.data.cifar import load_cifar
from onebit.export.packed import load_packed
from onebit.models.summary import summarize
from onebit.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "cifar10-mcu.onebit"
MLPERF_TINY_PARAMETER_BYTES = 96 * 1024


def test_the_committed_model_is_the_preset_s_network_within_96_kb():
    model, _ = load_packed(MODEL)
    assert model.config == get_preset("cifar10-mcu").model_config()
    assert summarize(model.config).memory_bytes <= MLPERF_TINY_PARAMETER_BYTES


def test_the_committed_model_scores_what_its_run_recorded(cifar10_dir):
    model, _ = load_packed(MODEL)
    test = load_cifar("cifar10", cifar10_dir, train=False, download=False)
    with torch.inference_mode():
        preds = torch.cat([model.eval()(test.images[i:i + 250]).argmax(1) for i in range(0, len(test), 250)])
    correct = int((preds == test.labels).sum())
    recorded = json.loads((ROOT / "docs" / "results" / "mcu-model" / "final-run" / "results.json").read_text())
    assert correct == round(recorded["test_acc"] * len(test)) and correct >= 0.85 * len(test)
