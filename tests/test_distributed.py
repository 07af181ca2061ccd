"""Data-parallel training under torchrun (2 gloo ranks on loopback) is the single-process run.

The equivalence runs are short, with 32-bit weights and a small learning rate: sign() turns a rounding
difference into a flipped weight, and these tiny BN nets on random data amplify rounding quickly (after 4
steps even float32 and float64 runs of one process differ by ~1e-4 in the momentum), so only such runs
can be compared at float tolerance.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from torch import nn

from onebit.cli import main as cli_main
from onebit.data.batches import GlobalBatchSampler, rank_slice
from onebit.models import WRNConfig, build_model
from onebit.train.checkpoint import load_checkpoint
from onebit.train.config import TrainConfig
from onebit.train.distributed import GlooSyncBatchNorm, convert_sync_batchnorm, loss_scale
from onebit.train.loop import train


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "onebit", "train", "--no-progress", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def relative_error(b: torch.Tensor, a: torch.Tensor) -> float:
    """||b - a|| / ||a|| over the whole tensor (0 for two zero tensors)."""
    a, b = a.double(), b.double()
    return float((b - a).norm() / a.norm().clamp_min(1e-12)) if a.norm() > 0 else float(b.norm())


def assert_same_run(single, multi, tolerance: float):
    """Same weights, buffers and momenta: every tensor within ``tolerance`` relative (L2) error."""
    a, b = load_checkpoint(single), load_checkpoint(multi)
    assert a.model_state.keys() == b.model_state.keys() and a.optimizer_state.keys() == b.optimizer_state.keys()
    errors = {**{k: relative_error(b.model_state[k], a.model_state[k]) for k in a.model_state},
              **{k: relative_error(b.optimizer_state[k], a.optimizer_state[k]) for k in a.optimizer_state}}
    worst = max(errors, key=errors.get)
    print(f"worst relative error {errors[worst]:.2e} ({worst})")
    assert errors[worst] <= tolerance, f"{worst}: relative error {errors[worst]:.2e} > {tolerance:.0e}"
    assert b.state["epoch"] == a.state["epoch"] and b.state["finished"]


# float32 (amp off): bf16 rounds each rank's slice differently, beyond any float tolerance
CIFAR_RUN = dict(depth=8, width=1, norm="bn", weight_bits=32, epochs=2, batch_size=45, train_limit=45,
                 val_size=20, lr=0.02, seed=3, device="cpu", num_threads=1, eval_batch_size=30, amp=False)


def cli_args(options: dict) -> list[str]:
    """``--name value`` per option; booleans as ``--name`` / ``--no-name``."""
    args = []
    for key, value in options.items():
        name = key.replace("_", "-")
        args += [f"--{name}" if value else f"--no-{name}"] if isinstance(value, bool) else [f"--{name}", str(value)]
    return args


# (design, largest relative L2 error allowed in any weight, buffer or momentum); the test prints the worst
# error it finds (pytest -s). The BN design in NCHW matches to ~2e-5. The default design (BN-free, 1 bit,
# channels_last) matches only to ~1e-3 in its stem momentum; in one-off diagnostics that gap came with the
# random translation (it vanished with translate = 0) and its cause was not found. Breaking the loss scale
# (distributed.loss_scale returning 1) made both cases fail. The strict BN case runs in NCHW because CPU
# BatchNorm2d rounds more coarsely in channels_last.
DESIGNS = {"bn-nchw": (dict(norm="bn", weight_bits=32, channels_last=False), 1e-4),
           "srelu-1bit-nhwc": (dict(norm="none", weight_bits=1, temperature=5.0, channels_last=True), 1e-2)}


@pytest.mark.parametrize("design", DESIGNS)
def test_two_gloo_ranks_with_resume_match_one_process(tiny_cifar10, tmp_path, design):
    """Synchronised BN or none, unequal slices (23 + 22 of 45), stopped after epoch 1 and resumed."""
    design_options, tolerance = DESIGNS[design]
    options = {**CIFAR_RUN, **design_options, "data_dir": str(tiny_cifar10)}
    single = train(TrainConfig(**options), tmp_path / "single", progress=False)
    run = tmp_path / "multi"
    first = torchrun(*cli_args(options), "--run-dir", str(run), "--stop-after", "1")
    assert first.stdout.count('"run_dir"') == 1                     # only rank 0 reports
    assert load_checkpoint(run).state["epoch"] == 1
    torchrun("--resume", str(run))
    assert_same_run(tmp_path / "single", run, tolerance)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]                       # one writer, no duplicated lines
    strict = tolerance <= 1e-4        # the loose design may flip one of its 20 validation / 50 test answers
    for r, s in zip(rows, ref):
        assert r["train_loss"] == pytest.approx(s["train_loss"], rel=tolerance / 10)
        assert r["val_acc"] == pytest.approx(s["val_acc"], abs=0 if strict else 0.05)
        assert r["test_acc"] == pytest.approx(s["test_acc"], abs=0 if strict else 0.02)
    results = json.loads((run / "results.json").read_text())
    assert results["test_loss"] == pytest.approx(single["test_loss"], rel=tolerance)


def test_torchrun_needs_an_explicit_run_dir(monkeypatch, capsys, tiny_cifar10):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert cli_main(["train", "--data-dir", str(tiny_cifar10), "--depth", "8", "--width", "1"]) == 1
    assert "under torchrun pass --run-dir" in capsys.readouterr().err


def test_rank_slices_are_tensor_split_shares():
    for n in range(0, 14):
        for world in (1, 2, 3, 5):
            items = torch.arange(n)
            parts = [items[rank_slice(n, r, world)] for r in range(world)]
            assert all(torch.equal(p, q) for p, q in zip(parts, torch.tensor_split(items, world)))


def test_loss_scale_makes_the_rank_average_the_global_mean():
    losses = torch.rand(125)
    parts = torch.tensor_split(losses, 2)
    ddp_average = sum(p.mean() * loss_scale(len(p), 125, 2) for p in parts) / 2
    assert ddp_average == pytest.approx(float(losses.mean()), rel=1e-6)


def test_global_batch_sampler_shares_one_global_batch():
    single = list(GlobalBatchSampler(50, 12, seed=4))
    assert len(single) == 4 and all(len(b) == 12 for b in single)
    ranks = [list(GlobalBatchSampler(50, 12, seed=4, rank=r, world_size=3)) for r in range(3)]
    for step, batch in enumerate(single):
        assert sum((r[step] for r in ranks), []) == batch          # same keys, same order, same seeds
    other = GlobalBatchSampler(50, 12, seed=4)
    other.set_epoch(1)
    assert list(other) != single


def test_cpu_sync_batchnorm_keeps_parameters_and_state_keys():
    model = build_model(WRNConfig(depth=8, width=1, norm="bn"))
    params = {id(p) for p in model.parameters()}
    keys = set(model.state_dict())
    convert_sync_batchnorm(model, torch.device("cpu"))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(isinstance(m, GlooSyncBatchNorm) for m in bns)
    assert {id(p) for p in model.parameters()} == params and set(model.state_dict()) == keys
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    assert model(x).shape == (4, 10)  # without a process group it is plain BatchNorm2d
