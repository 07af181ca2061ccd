"""The GPU path on a CUDA device (marker ``gpu``; ``scripts/gpu-check.sh`` runs these on the device machine).

* bf16 autocast + channels_last + ``torch.compile`` (what ``onebit train`` uses on CUDA) against the fp32
  eager step, from the same weights on the same batch. Tolerances (bf16 keeps 8 significant bits, so one
  rounding is ~0.4%; errors grow through the layers): loss within 1% relative, the whole gradient within
  5% relative L2 error (cosine >= 0.998), the updated weights within 1e-3 relative L2.
* Fused SGD against the per-tensor (foreach) SGD: within 1e-6 relative over 6 steps with weight decay and
  momentum, across a checkpoint save and restore in the middle (channels_last parameters).
* A run trained on the GPU, stopped after one epoch and resumed, ends with bit-identical weights and
  momentum to the uninterrupted run, under ``torch.use_deterministic_algorithms`` (with cuDNN autotuning,
  the default, the algorithm choice may differ between processes, so only equal statistics are expected);
  its checkpoint loads on the CPU with identical weights and predictions.
* The packed ``.onebit`` export of that GPU-trained model evaluates on the CPU exactly as its checkpoint.

Skipped without CUDA. ``ONEBIT_GPU_TESTS_ON_CPU=1`` (the gpu-check dry run) runs them on the CPU instead:
that checks the test code and the CPU side of each path, not bf16 or channels_last (GPU-only).
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # deterministic cuBLAS (resume test)

import pytest
import torch
import torch.nn.functional as F

from conftest import write_cifar_batch
from onebit.export.packed import load_packed, save_packed
from onebit.models import build_model
from onebit.train.checkpoint import load_checkpoint, restore_optimizer, save_checkpoint
from onebit.train.config import TrainConfig
from onebit.train.evaluation import predict_logits
from onebit.train.loop import train
from onebit.train.optimizer import make_optimizer
from onebit.train.step import TrainStep, prepare_model


def _device() -> torch.device | None:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("ONEBIT_GPU_TESTS_ON_CPU") == "1":
        return torch.device("cpu")
    return None


DEVICE = _device()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    DEVICE is None, reason="needs a CUDA GPU (torch.cuda.is_available() is False); scripts/gpu-check.sh runs "
                           "these on the device machine, ONEBIT_GPU_TESTS_ON_CPU=1 runs them on the CPU")]


@pytest.fixture(autouse=True)
def fresh_state():
    """Each test starts with no compiled graphs, TF32 off (exact fp32 references), and restores it all."""
    torch._dynamo.reset()
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled())
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved[:2]
    torch.backends.cudnn.benchmark = saved[2]
    torch.use_deterministic_algorithms(saved[3])
    torch._dynamo.reset()


def _batch(n: int = 64, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random images (a blurred noise field, so neighbouring pixels correlate like photographs)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, 3, 8, 8, generator=gen)
    images = (F.interpolate(noise, size=32, mode="bilinear", align_corners=False) * 255).round().to(torch.uint8)
    return images, torch.randint(0, classes, (n,), generator=gen)


def _grads(net) -> torch.Tensor:
    return torch.cat([p.grad.detach().float().flatten().cpu() for p in net.parameters()])


def _params(net) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten().cpu() for p in net.parameters()])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("norm", ["none", "bn"])
def test_amp_channels_last_compiled_step_matches_fp32_eager(norm):
    cfg = TrainConfig(depth=8, width=2, norm=norm, batch_size=64, device=str(DEVICE))
    x, y = (t.to(DEVICE) for t in _batch())
    torch.manual_seed(0)
    init = build_model(cfg.model_config()).state_dict()
    results = {}
    for path in ("fp32_eager", "gpu_path"):
        fast = path == "gpu_path"
        net = build_model(cfg.model_config())
        net.load_state_dict(init)
        # the GPU path exactly as the trainer sets it up (compile=None: on for CUDA); the reference plain
        net, module = prepare_model(net, DEVICE, channels_last=fast, compile=None if fast else False)
        if fast and DEVICE.type == "cuda":
            assert isinstance(module, torch._dynamo.eval_frame.OptimizedModule)
            assert net.stem.weight.is_contiguous(memory_format=torch.channels_last)
        step = TrainStep(module, make_optimizer(net, cfg, fused=DEVICE.type == "cuda"), DEVICE, amp=fast,
                         channels_last=fast)
        loss, hits = step(x, y, 0.1)
        results[path] = (float(loss), _grads(net), _params(net), int(hits))
    if DEVICE.type == "cuda":
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1, "nothing was compiled"
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert net(x).dtype == torch.bfloat16          # the forward really ran in bf16
    (loss_ref, g_ref, p_ref, _), (loss, g, p, _) = results["fp32_eager"], results["gpu_path"]
    assert abs(loss - loss_ref) <= 1e-2 * abs(loss_ref), (loss, loss_ref)
    assert _rel(g, g_ref) <= 5e-2, _rel(g, g_ref)
    assert float(F.cosine_similarity(g, g_ref, dim=0)) >= 0.998
    assert _rel(p, p_ref) <= 1e-3, _rel(p, p_ref)
    before = build_model(cfg.model_config())
    before.load_state_dict(init)
    assert _rel(p, _params(before)) > 1e-4, "the step changed no weight"


def test_fused_sgd_matches_foreach_sgd_across_a_checkpoint(tmp_path):
    cfg = TrainConfig(depth=8, width=2, device=str(DEVICE))
    torch.manual_seed(0)
    init = build_model(cfg.model_config()).state_dict()
    gen = torch.Generator().manual_seed(1)
    nets = {}
    for fused in (False, True):
        net = build_model(cfg.model_config()).to(DEVICE).to(memory_format=torch.channels_last)
        net.load_state_dict(init)
        nets[fused] = (net, make_optimizer(net, cfg, fused=fused))
        assert nets[fused][1].defaults["fused"] is (True if fused else None)
    grads = [[torch.randn(p.shape, generator=gen) for p in nets[False][0].parameters()] for _ in range(6)]
    lrs = [0.1, 0.08, 0.05, 0.03, 0.02, 0.01]
    for i, (gs, lr) in enumerate(zip(grads, lrs)):
        if i == 3:   # the fused run goes through a checkpoint: new optimizer, momentum restored from file
            net, opt = nets[True]
            save_checkpoint(tmp_path / "ckpt.safetensors", net, cfg.model_config(), opt)
            opt = make_optimizer(net, cfg, fused=True)
            restore_optimizer(opt, load_checkpoint(tmp_path / "ckpt.safetensors").optimizer_state)
            nets[True] = (net, opt)
        for net, opt in nets.values():
            for p, g in zip(net.parameters(), gs):
                p.grad = g.to(DEVICE).to(memory_format=torch.channels_last) if g.dim() == 4 else g.to(DEVICE)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()
    (ref, ref_opt), (net, opt) = nets[False], nets[True]
    for (name, a), b in zip(ref.named_parameters(), net.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)
        torch.testing.assert_close(opt.state[b]["momentum_buffer"], ref_opt.state[a]["momentum_buffer"],
                                   rtol=1e-6, atol=1e-7, msg=name)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A generated CIFAR-10 folder: 5 x 60 smooth training images, 100 test images."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        x, y = _batch(60, seed=i)
        write_cifar_batch(folder / f"data_batch_{i}", x.numpy(), y.tolist())
    x, y = _batch(100, seed=9)
    write_cifar_batch(folder / "test_batch", x.numpy(), y.tolist())
    return root


def _run_cfg(data, norm: str) -> TrainConfig:
    return TrainConfig(depth=8, width=1, norm=norm, epochs=3, batch_size=50, data_dir=str(data),
                       device=str(DEVICE), eval_batch_size=50, num_threads=1,
                       schedule="restarts" if norm == "bn" else "cosine", first_cycle=1)


@pytest.fixture(scope="module", params=["none", "bn"])
def gpu_run(request, tiny_data, tmp_path_factory):
    """(config, run dir) of a run trained on the device with deterministic algorithms, uninterrupted."""
    torch._dynamo.reset()
    saved = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        cfg = _run_cfg(tiny_data, request.param)
        run = tmp_path_factory.mktemp(f"run-{request.param}")
        train(cfg, run, progress=False)
    finally:
        torch.use_deterministic_algorithms(saved)
    return cfg, run


def test_gpu_checkpoint_resumes_bit_exactly_and_loads_on_cpu(gpu_run, tmp_path):
    cfg, full = gpu_run
    torch.use_deterministic_algorithms(True, warn_only=True)
    train(cfg, tmp_path, progress=False, stop_after=1)
    if DEVICE.type == "cuda":
        assert torch.backends.cudnn.benchmark is False     # autotuning is off in deterministic mode
    torch._dynamo.reset()
    final = train(cfg, tmp_path, resume=True, progress=False)
    a, b = load_checkpoint(full), load_checkpoint(tmp_path)
    assert b.state["epoch"] == a.state["epoch"] == cfg.epochs and b.state["finished"]
    assert a.model_state.keys() == b.model_state.keys() and a.optimizer_state.keys() == b.optimizer_state.keys()
    for key in a.model_state:
        assert torch.equal(a.model_state[key], b.model_state[key]), key
    for key in a.optimizer_state:
        assert torch.equal(a.optimizer_state[key], b.optimizer_state[key]), key
    assert final["test_acc"] == json.loads((full / "results.json").read_text())["test_acc"]
    # the checkpoint written on the device loads on the CPU: same weights, same predictions as on the device
    cpu_model = a.build_model()
    assert next(cpu_model.parameters()).device.type == "cpu"
    images, _ = _batch(100, seed=9)
    on_cpu = predict_logits(cpu_model, images, 50, "cpu")
    dev_model = a.build_model().to(DEVICE)
    on_dev = predict_logits(dev_model, images, 50, DEVICE)      # fp32, TF32 off
    torch.testing.assert_close(on_dev, on_cpu, rtol=1e-4, atol=1e-4 * float(on_cpu.abs().max()) + 1e-6)
    assert torch.equal(on_dev.argmax(1), on_cpu.argmax(1))


def test_packed_export_of_gpu_trained_model_evaluates_identically_on_cpu(gpu_run, tmp_path):
    cfg, run = gpu_run
    ckpt = load_checkpoint(run)
    assert ckpt.train_config["device"] == str(DEVICE)
    model = ckpt.build_model()
    save_packed(model, tmp_path / "m.onebit")
    packed, _ = load_packed(tmp_path / "m.onebit")
    images, labels = _batch(100, seed=9)
    a = predict_logits(model, images, 50, "cpu")
    b = predict_logits(packed, images, 50, "cpu")
    assert torch.equal(a.argmax(1), b.argmax(1))
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    # and the device's own evaluation (bf16, as onebit train scores it) picks the same classes, ties aside
    on_dev = predict_logits(ckpt.build_model().to(DEVICE), images, 50, DEVICE, amp=True)
    margin = a.topk(2, 1).values
    clear = (margin[:, 0] - margin[:, 1]) > 0.05 * a.abs().max()
    assert torch.equal(on_dev.argmax(1)[clear], b.argmax(1)[clear])
