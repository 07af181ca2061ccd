import json
import subprocess
import sys

import pytest
import torch

from onebit.errors import ConfigError, TrainingDiverged
from onebit.loading import load_model_file
from onebit.models import WRNConfig, build_model
from onebit.train.checkpoint import load_checkpoint
from onebit.train.config import TrainConfig
from onebit.train.loop import Trainer, recompute_bn_statistics, train
from onebit.train.optimizer import make_optimizer
from onebit.train.step import TrainStep


def tiny(data_dir, **kw):
    base = dict(data_dir=str(data_dir), depth=8, width=1, epochs=2, batch_size=50, seed=1, num_threads=2)
    return TrainConfig(**{**base, **kw})


def weights(run_dir):
    return load_checkpoint(run_dir).model_state


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("norm", ["none", "bn"])
def test_resumed_run_ends_with_identical_weights(tiny_cifar10, tmp_path, norm, amp):
    cfg = tiny(tiny_cifar10, norm=norm, schedule="restarts" if norm == "bn" else "cosine", amp=amp)
    train(cfg, tmp_path / "straight", progress=False)
    stopped = train(cfg, tmp_path / "split", progress=False, stop_after=1)
    assert stopped["stopped_at_epoch"] == 1
    assert load_checkpoint(tmp_path / "split").state["epoch"] == 1
    train(cfg, tmp_path / "split", resume=True, progress=False)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "split")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert load_checkpoint(tmp_path / "split").state["finished"]


def test_run_directory_contents(tiny_cifar10, tmp_path):
    result = train(tiny(tiny_cifar10, epochs=1, val_size=40), tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["val_size"] == 40
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert {"train_loss", "train_acc", "lr", "images_per_s", "val_acc", "test_acc", "test_top5"} <= set(row)
    assert json.loads((run / "results.json").read_text())["test_acc"] == result["test_acc"]


def test_existing_run_is_not_overwritten(tiny_cifar10, tmp_path):
    train(tiny(tiny_cifar10, epochs=1), tmp_path / "run", progress=False)
    before = (tmp_path / "run" / "checkpoint.safetensors").read_bytes()
    with pytest.raises(Exception, match="--resume"):
        train(tiny(tiny_cifar10, epochs=1), tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "checkpoint.safetensors").read_bytes() == before


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tiny_cifar10, tmp_path):
    cfg = tiny(tiny_cifar10, weight_bits=32)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer.fit_until(1)
    good = {k: v.clone() for k, v in weights(tmp_path / "run").items()}
    trainer.cfg = cfg.replace(lr=1e6, lr_min=0.0)
    with pytest.raises(TrainingDiverged, match="epoch 2.*last good checkpoint \\(epoch 1\\)"):
        trainer.fit_until(2)
    kept = load_checkpoint(tmp_path / "run")
    assert kept.state["epoch"] == 1
    assert all(torch.equal(good[k], kept.model_state[k]) for k in good)


def test_weight_decay_only_on_conv_weights():
    model = build_model(WRNConfig(depth=8, width=1))
    opt = make_optimizer(model, tiny(".", epochs=1))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(c.weight) for _, c in model.conv_layers()}
    assert opt.defaults["momentum"] == 0.9 and not opt.defaults["nesterov"]


def test_bn_statistics_recomputed_exactly_over_the_training_set():
    """Every BN layer's running mean and variance become the plain average, over the batches, of that
    batch's statistics of the layer's input -- whatever stale statistics the layers held before."""
    torch.manual_seed(0)
    model = build_model(WRNConfig(depth=8, width=1, norm="bn"))
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) > 5
    for bn in bns:                                  # stale statistics, far from the true ones
        bn.running_mean.fill_(123.0)
        bn.running_var.fill_(456.0)
        bn.num_batches_tracked.fill_(99)
    images = torch.randint(0, 256, (90, 3, 32, 32), dtype=torch.uint8)
    recompute_bn_statistics(model, images, 30, torch.device("cpu"))
    assert not model.training
    # independently: each BN layer's input, per batch, with the recomputed model run in eval mode up to it
    # (BN in train mode normalises by the batch statistics; collect them from the inputs directly)
    inputs: dict[torch.nn.Module, list[torch.Tensor]] = {bn: [] for bn in bns}
    hooks = [bn.register_forward_pre_hook(lambda m, args: inputs[m].append(args[0].detach())) for bn in bns]
    model.train()
    saved = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in bns]
    with torch.no_grad():
        for start in range(0, 90, 30):
            model(images[start:start + 30].float())
    for h in hooks:
        h.remove()
    for bn, (mean, var) in zip(bns, saved):
        batches = inputs[bn]
        assert len(batches) == 3
        want_mean = torch.stack([x.mean((0, 2, 3)) for x in batches]).mean(0)
        want_var = torch.stack([x.var((0, 2, 3), unbiased=True) for x in batches]).mean(0)
        assert torch.allclose(mean, want_mean, rtol=1e-4, atol=1e-5), bn
        assert torch.allclose(var, want_var, rtol=1e-4, atol=1e-5), bn
    assert torch.allclose(saved[0][0], images.float().mean((0, 2, 3)), rtol=1e-5)   # the input BN


def test_bn_statistics_after_training_are_those_of_the_augmented_training_batches(tiny_cifar10, tmp_path):
    """As the reference code (WideResNet_Test.m): after training, BN statistics are averaged over one more
    epoch of training batches augmented as in training -- not over plain images, whose statistics the
    network never trained under (that cost a 45-epoch 32-bit WRN-8-1 ~9 points)."""
    from onebit.data.augment import Augmentation
    from onebit.data.batches import epoch_batches
    from onebit.data.splits import load_splits
    from onebit.train.loop import recompute_bn_from_batches

    cfg = tiny(tiny_cifar10, norm="bn", schedule="restarts", epochs=1, num_threads=1)
    train(cfg, tmp_path / "run", progress=False)
    model, _ = load_model_file(tmp_path / "run")
    final = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    assert final
    train_split = load_splits(cfg.dataset, cfg.data_dir, val_size=cfg.val_size, train_limit=cfg.train_limit,
                              batch_size=cfg.batch_size).train
    augmented = [x for x, _ in epoch_batches(train_split.images, train_split.labels, cfg.batch_size, cfg.seed, 2,
                                             Augmentation(cfg.translate, cfg.flip, cfg.cutout))]
    plain = [train_split.images[i:i + cfg.batch_size] for i in range(0, len(train_split.images), cfg.batch_size)]
    for batches, same in ((augmented, True), (plain, False)):
        recompute_bn_from_batches(model, batches, torch.device("cpu"))
        state = model.state_dict()
        close = all(torch.allclose(state[k], final[k], rtol=1e-4, atol=1e-4) for k in final)
        assert close is same


def test_impossible_configurations():
    with pytest.raises(ConfigError, match="6n\\+2"):
        TrainConfig(depth=9)
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(ConfigError, match="unknown training options"):
        TrainConfig.from_dict({"depht": 20})


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "onebit", *args], capture_output=True, text=True,
                          timeout=300, **kw)


def test_cli_nan_loss_exits_nonzero_with_one_line(tiny_cifar10, tmp_path):
    proc = run_cli("train", "--data-dir", str(tiny_cifar10), "--depth", "8", "--width", "1", "--epochs", "2",
                   "--batch-size", "50", "--weight-bits", "32", "--lr", "1e6", "--lr-min", "0",
                   "--run-dir", str(tmp_path / "run"), "--no-progress")
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines()[-1].startswith("onebit train: error: training loss became")
    assert not (tmp_path / "run" / "results.json").exists()


def test_cli_train_then_eval(tiny_cifar10, tmp_path):
    proc = run_cli("train", "--preset", "cifar10-tiny", "--data-dir", str(tiny_cifar10), "--epochs", "1",
                   "--train-limit", "0", "--batch-size", "50", "--run-dir", str(tmp_path / "run"),
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("eval", str(tmp_path / "run"), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["count"] == 50 and len(result["per_class"]) == 10
    model, _ = load_model_file(tmp_path / "run")
    assert model.config.depth == 8
    proc = run_cli("eval", str(tmp_path / "run"))
    assert "top-1 accuracy" in proc.stdout and "c9" in proc.stdout


def test_cli_resume_refuses_changed_options(tiny_cifar10, tmp_path):
    assert run_cli("train", "--data-dir", str(tiny_cifar10), "--depth", "8", "--width", "1", "--epochs", "2",
                   "--batch-size", "50", "--stop-after", "1", "--run-dir", str(tmp_path / "r"),
                   "--no-progress").returncode == 0
    proc = run_cli("train", "--resume", str(tmp_path / "r"), "--width", "2")
    assert proc.returncode == 1 and "cannot change width" in proc.stderr


def test_cli_impossible_config_and_unknown_preset():
    proc = run_cli("train", "--depth", "9")
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "onebit train: error: WRN depth must be 6n+2 with n >= 1 (8, 14, 20, 26, ...), got 9")
    proc = run_cli("train", "--preset", "nope")
    assert proc.returncode == 1 and "unknown preset 'nope'" in proc.stderr


def test_cli_presets_lists_the_paper_table():
    proc = run_cli("presets")
    names = [line.split()[0] for line in proc.stdout.splitlines()]
    assert len([n for n in names if "wrn20-10" in n]) == 8
    proc = run_cli("presets", "cifar100-wrn20-10-srelu-1bit")
    cfg = json.loads(proc.stdout)
    assert cfg["temperature"] == 25 and cfg["epochs"] == 300 and cfg["norm"] == "none"


@pytest.mark.slow
def test_learns_real_cifar10_well_above_chance(cifar10_dir, tmp_path):
    cfg = TrainConfig(data_dir=str(cifar10_dir), depth=8, width=2, epochs=2, train_limit=10000, cutout=0,
                      seed=0)
    result = train(cfg, tmp_path / "run", progress=False)
    assert result["test_acc"] > 0.25, result  # chance is 0.10; one SE on 1000 images is ~1.5 points


def test_resume_refuses_a_checkpoint_trained_under_other_settings(tiny_cifar10, tmp_path):
    cfg = tiny(tiny_cifar10, epochs=3)
    train(cfg, tmp_path / "run", progress=False, stop_after=1)
    before = (tmp_path / "run" / "checkpoint.safetensors").read_bytes()
    for changes, named in [({"seed": 2}, "seed: 1 -> 2"), ({"lr": 0.05}, "lr: 0.1 -> 0.05"),
                           ({"epochs": 4}, "epochs: 3 -> 4"), ({"flip": False}, "flip: True -> False")]:
        with pytest.raises(ConfigError, match=named):
            train(cfg.replace(**changes), tmp_path / "run", resume=True, progress=False)
    assert (tmp_path / "run" / "checkpoint.safetensors").read_bytes() == before
    # settings that do not change results may differ
    train(cfg.replace(num_threads=1, eval_batch_size=7), tmp_path / "run", resume=True, progress=False,
          stop_after=2)
    assert load_checkpoint(tmp_path / "run").state["epoch"] == 2


def test_changed_settings_counts_settings_a_checkpoint_predates_at_their_default():
    from onebit.train.loop import changed_settings

    current = TrainConfig(depth=8, width=1).to_dict()
    old = {k: v for k, v in current.items() if k not in ("crop_size", "bn_recompute")}
    assert changed_settings(old, current) == ""
    assert changed_settings(old, {**current, "crop_size": 64}) == "crop_size: 224 -> 64"
    assert changed_settings({**current, "data_dir": "/elsewhere", "num_threads": 9}, current) == ""
    assert changed_settings({}, current) == "it records no training configuration"


@pytest.mark.parametrize("option, at_limit, above", [
    ("num_threads", 1024, 1025), ("depth", 998, 1004), ("width", 1000, 1001), ("lr", 1e6, 2e6),
    ("epochs", 100_000, 100_001), ("weight_decay", 1.0, 2.0), ("eval_batch_size", 100_000, 100_001),
])
def test_every_option_that_sizes_work_has_an_upper_bound(option, at_limit, above):
    with pytest.raises(ConfigError, match=f"{option} = {above} is above the limit of"):
        TrainConfig(**{option: above})
    if option not in ("depth", "width"):         # a net that deep or wide is refused by its weight count
        assert getattr(TrainConfig(**{option: at_limit}), option) == at_limit


def test_a_network_too_large_to_train_is_refused_before_it_is_built():
    with pytest.raises(ConfigError, match="conv weights, above the limit"):
        TrainConfig(depth=200, width=200)
    assert TrainConfig(depth=20, width=10).model_config().conv_weight_estimate() < 3e7   # the paper's WRN-20-10


def test_label_smoothing_changes_the_training_loss_as_cross_entropy_defines_it():
    torch.manual_seed(0)
    net = build_model(WRNConfig(depth=8, width=1))
    x, y = torch.randint(0, 256, (6, 3, 32, 32)).float(), torch.arange(6)
    with torch.no_grad():
        logits = net(x)
    log_p = logits.log_softmax(1)
    want = {0.0: float(-log_p[torch.arange(6), y].mean()),
            0.2: float(-(0.8 * log_p[torch.arange(6), y] + 0.2 * log_p.mean(1)).mean())}
    for smoothing, expected in want.items():
        torch.manual_seed(0)
        net = build_model(WRNConfig(depth=8, width=1))
        step = TrainStep(net, make_optimizer(net, tiny(".", epochs=1)), torch.device("cpu"), amp=False,
                         channels_last=False, label_smoothing=smoothing)
        loss, _ = step(x, y, 0.0)
        assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_new_recipe_options_keep_the_hash_of_runs_that_do_not_use_them():
    base = TrainConfig(depth=8, width=1)
    assert base.replace(label_smoothing=0.0, warmup_epochs=0).hash() == base.hash()
    assert base.replace(label_smoothing=0.1).hash() != base.hash() != base.replace(warmup_epochs=1).hash()
    with pytest.raises(ConfigError, match="warmup_epochs"):
        TrainConfig(epochs=3, warmup_epochs=3)
    with pytest.raises(ConfigError, match="label_smoothing"):
        TrainConfig(label_smoothing=1.0)


def test_weight_average_follows_the_ema_recursion_and_becomes_the_final_model(tiny_cifar10, tmp_path):
    """ema_0 = w_1 (the weights after the first step), ema_t = d ema_(t-1) + (1 - d) w_t; evaluation uses it,
    and the finished run's model is the average."""
    from onebit.train.loop import Trainer

    d = 0.8
    cfg = tiny(tiny_cifar10, epochs=1, ema_decay=d, amp=False)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trajectory = []
    original = trainer.step_fn.__call__

    class Recording:
        def __call__(self, x, y, lr):
            out = original(x, y, lr)
            trajectory.append({k: v.detach().clone() for k, v in trainer.net.named_parameters()})
            return out

    trainer.step_fn = Recording()
    trainer.fit()
    assert len(trajectory) == trainer.steps_per_epoch >= 2
    want = dict(trajectory[0])
    for weights in trajectory[1:]:
        want = {k: d * want[k] + (1 - d) * weights[k] for k in want}
    final = load_checkpoint(tmp_path / "run").model_state
    for name, value in want.items():
        assert torch.allclose(final[name], value, rtol=1e-5, atol=1e-7), name
    assert any(not torch.equal(final[k], trajectory[-1][k]) for k in want)     # not the last weights


def test_a_run_with_a_weight_average_resumes_exactly(tiny_cifar10, tmp_path):
    cfg = tiny(tiny_cifar10, epochs=2, ema_decay=0.9)
    train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "split", progress=False, stop_after=1)
    assert load_checkpoint(tmp_path / "split").average_state
    train(cfg, tmp_path / "split", resume=True, progress=False)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    assert a.model_state.keys() == b.model_state.keys() and a.average_state.keys() == b.average_state.keys()
    assert all(torch.equal(a.model_state[k], b.model_state[k]) for k in a.model_state)
    assert all(torch.equal(a.average_state[k], b.average_state[k]) for k in a.average_state)


def test_an_unfinished_averaging_run_evaluates_and_exports_its_average(tiny_cifar10, tmp_path):
    from onebit.loading import load_model_file

    cfg = tiny(tiny_cifar10, epochs=3, ema_decay=0.9, norm="bn", schedule="restarts")
    train(cfg, tmp_path / "run", progress=False, stop_after=1)
    ckpt = load_checkpoint(tmp_path / "run")
    model, _ = load_model_file(tmp_path / "run")
    state = model.state_dict()
    assert any(not torch.equal(state[k], ckpt.model_state[k]) for k in state)             # not the live weights
    assert all(torch.equal(state[k], ckpt.average_state[f"module.{k}"]) for k in state)   # the average
    train(cfg, tmp_path / "run", resume=True, progress=False)
    final = load_checkpoint(tmp_path / "run")                 # finished: the average, BN statistics recomputed
    assert all(torch.equal(final.model_state[k], final.average_state[f"module.{k}"]) for k in final.model_state)


def test_a_cpu_run_from_before_bf16_resumes_in_float32(tiny_cifar10, tmp_path, capsys):
    """A version-1 checkpoint (and config.json) of a CPU run with amp = true trained in float32: it
    continues in float32, ends with the weights of an uninterrupted float32 run, and says so."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    cfg = tiny(tiny_cifar10, amp=False)
    train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "old", progress=False, stop_after=1)
    path = tmp_path / "old" / "checkpoint.safetensors"
    with safe_open(str(path), framework="pt") as f:                # as onebit wrote it before this change
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    meta["version"] = "1"
    meta["train_config"] = json.dumps({**json.loads(meta["train_config"]), "amp": True})
    save_file(tensors, str(path), metadata=meta)
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    (tmp_path / "old" / "config.json").write_text(json.dumps({**config, "amp": True}))
    capsys.readouterr()
    result = train(cfg.replace(amp=True), tmp_path / "old", resume=True, progress=False)
    assert "was trained in float32" in capsys.readouterr().err
    assert json.loads((tmp_path / "old" / "config.json").read_text())["amp"] is False
    assert result["config_hash"] == cfg.hash()
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "old")
    assert all(torch.equal(a[k], b[k]) for k in a)
