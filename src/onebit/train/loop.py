"""The training loop: reference recipe, per-iteration schedule, atomic checkpoints, exact resume.

The run directory (``onebit.rundir``: names, atomic writes, lock) holds the resolved config, one metrics
row per epoch, a checkpoint after every epoch and the final results. A training process holds the run
directory's lock throughout; the metrics always end at the checkpoint's epoch (a resume truncates them).

Under ``torchrun`` the same code trains data-parallel (``train/distributed.py``): every rank takes its
slice of each global batch, metrics are summed over ranks, and only rank 0 writes the run directory.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from onebit.cache import file_sha256
from onebit.data.batches import rank_slice
from onebit.data.splits import load_splits
from onebit.errors import ConfigError, OnebitError, TrainingDiverged, warn
from onebit.models import WideResNet, build_model
from onebit.rundir import RunDir
from onebit.train.checkpoint import load_checkpoint, restore_optimizer, save_checkpoint
from onebit.train.config import NOT_RESULT_SETTINGS, TrainConfig, teacher_file
from onebit.train.distributed import DistEnv, all_reduce_sum, device_for, distributed_context
from onebit.train.evaluation import metric_sums, predict_batches
from onebit.train.precision import describe, inference_autocast, resolve_amp
from onebit.train.optimizer import make_optimizer
from onebit.train.schedules import learning_rate
from onebit.train.sources import make_source, split_batches
from onebit.train.step import TrainStep, prepare_model
from onebit.train.threads import default_threads


@torch.no_grad()
def recompute_bn_statistics(model: nn.Module, images: torch.Tensor, batch_size: int,
                            device: torch.device, rank: int = 0, world_size: int = 1) -> None:
    """Replace every BN layer's running mean/var by exact averages over ``images`` (no augmentation).

    With ``world_size > 1`` (and synchronised BN) each rank passes its slice of every batch.
    """
    batches = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        batches.append(batch[rank_slice(len(batch), rank, world_size)])
    recompute_bn_from_batches(model, batches, device)


@torch.no_grad()
def recompute_bn_from_batches(model: nn.Module, batches, device: torch.device, amp: bool = False) -> None:
    """``recompute_bn_statistics`` over an iterable of image batches: each BN layer's running statistics
    become the plain average of the per-batch statistics."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = exact mean over batches
    model.train()
    for batch in batches:
        with inference_autocast(device.type, amp):
            model(batch.to(device))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()


def changed_settings(recorded: dict[str, Any], current: dict[str, Any]) -> str:
    """The result-changing settings whose values differ between a checkpoint's recorded training config
    and the run's (``name: old -> new``, comma-separated; '' when they agree). A setting the checkpoint
    predates counts at its default; a checkpoint that records no config at all cannot be matched."""
    if not recorded:
        return "it records no training configuration"
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    diffs = []
    for key, value in current.items():
        old = recorded.get(key, defaults.get(key))
        if key == "teacher" and (old is None) == (value is None):
            continue                        # a teacher is matched by its file's digest (Trainer.resume)
        if key not in NOT_RESULT_SETTINGS and old != value:
            diffs.append(f"{key}: {old!r} -> {value!r}")
    return ", ".join(diffs)


class Trainer:
    """Owns one run: data source, model, optimizer, schedule, checkpoints and metrics.

    ``self.net`` is the WideResNet (what checkpoints hold); ``self.model`` is the module the step runs
    (``net``, or DDP over it with ``world_size > 1``, compiled when compile is on). With ``world_size > 1``
    the process group must be initialised (``train`` does it under torchrun).
    """

    def __init__(self, cfg: TrainConfig, run_dir: str | Path, progress: bool = True,
                 rank: int = 0, world_size: int = 1):
        if cfg.amp is None:                 # automatic: decided once, then recorded in config.json
            cfg = cfg.replace(amp=resolve_amp(None, cfg.device))
        self.cfg = cfg
        self.dir = RunDir(run_dir)
        self.run_dir = self.dir.path
        self.progress = progress and rank == 0
        self.rank, self.world_size = rank, world_size
        if world_size > 1 and not torch.distributed.is_initialized():
            raise ConfigError("a multi-process Trainer needs torch.distributed initialised; launch with torchrun")
        if world_size > cfg.batch_size:
            raise ConfigError(f"batch_size {cfg.batch_size} is smaller than the {world_size} ranks")
        local_rank = int(os.environ.get("LOCAL_RANK", rank)) if world_size > 1 else 0
        self.device = device_for(cfg.device, DistEnv(rank, world_size, local_rank))
        if self.device.type == "cpu":
            torch.set_num_threads(default_threads(cfg.num_threads))
        self.data = load_splits(cfg.dataset, cfg.data_dir, val_size=cfg.val_size, train_limit=cfg.train_limit,
                                batch_size=cfg.batch_size, num_classes=cfg.num_classes)
        self.source = make_source(self.data.train, cfg, self.device, rank, world_size, self.progress)
        self.steps_per_epoch = self.source.steps_per_epoch
        torch.manual_seed(cfg.seed)
        self.model_config = cfg.model_config()
        self.net: WideResNet
        self.net, self.model = prepare_model(build_model(self.model_config), self.device, cfg.channels_last,
                                             world_size, cfg.compile)
        self.optimizer = make_optimizer(self.net, cfg, fused=self.device.type == "cuda")
        # the weight average (ema_decay > 0): updated after every step, evaluated, and the final model
        self.average = (AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
                        if cfg.ema_decay else None)
        self.epoch = 0
        self.best: dict[str, Any] = {}
        self.elapsed = 0.0
        self.step_fn = TrainStep(self.model, self.optimizer, self.device, cfg.amp, cfg.channels_last,
                                 world_size, cfg.batch_size, cfg.label_smoothing,
                                 (cfg.distill_weight, cfg.distill_temperature) if cfg.teacher else None)

    # ----- state -----
    @property
    def checkpoint_path(self) -> Path:
        return self.dir.checkpoint

    def state(self, finished: bool = False) -> dict[str, Any]:
        state = {"epoch": self.epoch, "step": self.epoch * self.steps_per_epoch, "finished": finished,
                 "best": self.best, "elapsed_s": self.elapsed}
        if self.cfg.teacher:
            state["teacher_sha256"] = file_sha256(teacher_file(self.cfg.teacher))
        return state

    def save(self, finished: bool = False) -> None:
        if self.rank == 0:
            save_checkpoint(self.checkpoint_path, self.net, self.model_config, self.optimizer,
                            self.cfg.to_dict(), self.state(finished), self.average)

    def resume(self) -> None:
        ckpt = load_checkpoint(self.checkpoint_path)
        if ckpt.version == "1" and self.device.type == "cpu" and self.cfg.amp and ckpt.train_config.get("amp"):
            # written before CPUs trained in bf16: its amp = true trained in float32, and so it continues
            warn(f"{self.checkpoint_path} was trained in float32 (amp = true meant GPUs only when it was "
                 f"written); continuing in float32")
            self.cfg = self.cfg.replace(amp=False)
            self.step_fn.amp = False
            ckpt.train_config = {**ckpt.train_config, "amp": False}
        if ckpt.model_config != self.model_config:
            raise ConfigError(f"{self.checkpoint_path}: checkpoint model {ckpt.model_config.name} does not "
                              f"match the run's config {self.model_config.name}")
        changed = changed_settings(ckpt.train_config, self.cfg.to_dict())
        if changed:
            raise ConfigError(f"{self.checkpoint_path}: the checkpoint was trained with other settings than "
                              f"{self.dir.config.name} ({changed}); the run cannot continue under them")
        if self.cfg.teacher and ckpt.state.get("teacher_sha256") != file_sha256(teacher_file(self.cfg.teacher)):
            raise ConfigError(f"{self.checkpoint_path}: teacher {self.cfg.teacher} is not the file this run was "
                              f"trained with (its SHA-256 differs)")
        if ckpt.state["epoch"] > self.cfg.epochs:
            raise ConfigError(f"{self.checkpoint_path}: checkpoint is at epoch {ckpt.state['epoch']}, past the "
                              f"run's {self.cfg.epochs} epochs")
        self.net.load_state_dict({k: v.to(self.device) for k, v in ckpt.model_state.items()})
        restore_optimizer(self.optimizer, ckpt.optimizer_state)
        if self.average is not None:
            if not ckpt.average_state:
                raise ConfigError(f"{self.checkpoint_path}: the run averages its weights but the checkpoint "
                                  f"holds no average")
            self.average.load_state_dict({k: v.to(self.device) for k, v in ckpt.average_state.items()})
        self.epoch = ckpt.state["epoch"]
        self.best = ckpt.state["best"]
        self.elapsed = ckpt.state["elapsed_s"]
        if self.rank == 0:
            self.dir.truncate_metrics(self.epoch)      # rows written after the last checkpoint

    # ----- training -----
    def train_epoch(self) -> dict[str, float]:
        cfg = self.cfg
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        start = time.perf_counter()
        batches = self.source.epoch(self.epoch)
        bar = tqdm(batches, total=self.steps_per_epoch, disable=not self.progress, leave=False,
                   desc=f"epoch {self.epoch + 1}/{cfg.epochs}", unit="batch", dynamic_ncols=True)
        lr = cfg.lr
        for i, (x, y, *teacher) in enumerate(bar):       # teacher: [its logits] when distilling
            step = self.epoch * self.steps_per_epoch + i
            lr = learning_rate(step, self.steps_per_epoch, cfg.epochs, cfg.schedule, cfg.lr, cfg.lr_min,
                               cfg.first_cycle, cfg.warmup_epochs)
            loss, hits = self.step_fn(x, y, lr, *teacher)
            if self.average is not None:
                self.average.update_parameters(self.net)
            loss_sum += loss * len(y)
            correct += hits
            seen += len(y)
            if self.progress and (i % 20 == 19 or i == self.steps_per_epoch - 1):
                rate = seen * self.world_size / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}",
                                lr=f"{lr:.4f}", img_s=f"{rate:.0f}")
        totals = self._reduce(torch.stack([loss_sum, correct.to(loss_sum.dtype),
                                           torch.tensor(float(seen), device=self.device)]))
        seconds = time.perf_counter() - start
        loss_mean = float(totals[0] / totals[2])
        if not math.isfinite(loss_mean):
            kept = (f"The last good checkpoint (epoch {self.epoch}) is kept in {self.run_dir}" if self.epoch
                    else "No checkpoint was written (it diverged in the first epoch); try a lower --lr")
            raise TrainingDiverged(f"training loss became {loss_mean} in epoch {self.epoch + 1}; stopped. {kept}")
        return {"train_loss": loss_mean, "train_acc": float(totals[1] / totals[2]), "lr": lr,
                "images_per_s": float(totals[2]) / seconds, "epoch_time_s": seconds}

    @property
    def evaluated(self) -> nn.Module:
        """The network the metrics describe: the weight average when the run keeps one."""
        return self.average.module if self.average is not None else self.net

    def _reduce(self, values: torch.Tensor) -> torch.Tensor:
        """Sum ``values`` over ranks (identity in a single process)."""
        return all_reduce_sum(values) if self.world_size > 1 else values

    def evaluate_splits(self) -> dict[str, float]:
        """Top-1 / top-5 / loss on the validation and test splits, each rank scoring its share."""
        out = {}
        cfg = self.cfg
        for name, split in (("val", self.data.val), ("test", self.data.test)):
            if split is None or len(split) == 0:
                continue
            sums = torch.zeros(4, dtype=torch.float64, device=self.device)
            batches = split_batches(split, cfg.eval_batch_size, self.rank, self.world_size, self.device,
                                    crop_size=cfg.crop_size, resize_size=cfg.resize_size, workers=cfg.workers)
            for logits, labels in predict_batches(self.evaluated, batches, self.device, cfg.amp, cfg.channels_last):
                sums += metric_sums(logits, labels)
            loss, top1, top5, count = self._reduce(sums).tolist()
            out.update({f"{name}_acc": top1 / count, f"{name}_top5": top5 / count, f"{name}_loss": loss / count})
        return out

    def fit(self) -> dict[str, Any]:
        """Train from ``self.epoch`` to ``cfg.epochs``; returns the final metrics."""
        self.fit_until(self.cfg.epochs)
        return self.finish()

    def fit_until(self, stop_epoch: int) -> dict[str, Any]:
        """Train epochs up to ``stop_epoch`` (checkpointing each); returns the last epoch's metrics."""
        cfg = self.cfg
        row: dict[str, Any] = {}
        if self.rank == 0:
            self.dir.write_config(cfg.to_dict())
        while self.epoch < min(stop_epoch, cfg.epochs):
            t0 = time.perf_counter()
            row = {"epoch": self.epoch + 1, **self.train_epoch(), **self.evaluate_splits()}
            self.epoch += 1
            self.elapsed += time.perf_counter() - t0
            row["elapsed_s"] = self.elapsed
            key = "val_acc" if "val_acc" in row else "test_acc"
            if key in row and row[key] >= self.best.get(key, -1.0):
                self.best = {key: row[key], "epoch": self.epoch}
            if self.rank == 0:
                self.dir.record_epoch(row)        # metrics first: a kill before the save redoes this epoch
                self.save()
                if self.progress:
                    shown = "  ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch")
                    tqdm.write(f"epoch {self.epoch}/{cfg.epochs}  {shown}")
        return {"stopped_at_epoch": self.epoch, **row}

    def statistics_batches(self):
        """The images BN statistics are recomputed over after training: one more epoch of training batches,
        augmented as in training (seeded by the epoch number, so a resumed run gets the same), as the
        reference code does (McDonnell-Lab/1-bit-per-weight, WideResNet_Test.m). The network learned under
        the statistics of augmented batches: over un-augmented images (what onebit did before 2026-12-07)
        a 45-epoch 32-bit WRN-8-1 lost ~9 points of accuracy (docs/results/converged-study)."""
        return (batch[0] for batch in self.source.epoch(self.cfg.epochs + 1))

    def finish(self) -> dict[str, Any]:
        if self.average is not None:      # the averaged weights become the run's model
            self.net.load_state_dict(self.average.module.state_dict())
        if self.model_config.norm == "bn" and self.cfg.bn_recompute:
            recompute_bn_from_batches(self.net, self.statistics_batches(), self.device, self.cfg.amp)
        if self.average is not None:      # ... and are what the final metrics describe
            self.average.module.load_state_dict(self.net.state_dict())
        final = {"epochs": self.epoch, **self.evaluate_splits(), "best": self.best,
                 "elapsed_s": self.elapsed, "config_hash": self.cfg.hash()}
        if self.rank == 0:
            self.save(finished=True)
            self.dir.write_results(final)
        return final


def train(cfg: TrainConfig, run_dir: str | Path, resume: bool = False, progress: bool = True,
          stop_after: int | None = None) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` (or continue it with ``resume=True``); returns final metrics.

    ``stop_after`` ends the process after that epoch, resumably, with the schedule of the full run.
    Launched by torchrun, this process trains as one rank of a data-parallel job (every rank reads the
    checkpoint when resuming, so multi-node resumes need the run directory on a shared filesystem).
    """
    directory = RunDir(run_dir)
    created = not directory.path.exists()
    try:
        return _train(cfg, directory, resume, progress, stop_after)
    except BaseException:
        if created:
            directory.remove_if_unused()      # a run refused before it wrote anything leaves no folder
        raise


def _train(cfg: TrainConfig, directory: RunDir, resume: bool, progress: bool, stop_after: int | None
           ) -> dict[str, Any]:
    run_dir = directory.path
    with distributed_context(cfg.device) as env:
        with (directory.lock() if env.rank == 0 else nullcontext()):
            if env.rank == 0:
                directory.remove_stale_temps()
                if not directory.has_checkpoint() and not directory.is_finished():
                    if resume and directory.metrics.exists():
                        warn(f"{run_dir} has no checkpoint yet (killed in its first epoch); starting it again")
                    directory.clear_partial()          # metrics of an epoch no checkpoint holds
            if not resume and (directory.has_checkpoint() or directory.is_finished()):
                raise OnebitError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or pick "
                                  f"another --run-dir")
            trainer = Trainer(cfg, run_dir, progress, rank=env.rank, world_size=env.world_size)
            if resume and directory.has_checkpoint():
                trainer.resume()
                if trainer.progress:
                    print(f"resuming {run_dir} at epoch {trainer.epoch}/{cfg.epochs}")
            if trainer.progress:          # rank 0 of an interactive run; config.json records it in any case
                tqdm.write(describe(trainer.cfg.amp, trainer.device.type), file=sys.stderr)
            if stop_after is not None and stop_after < cfg.epochs:
                result = trainer.fit_until(stop_after)
            else:
                result = trainer.fit()
            env.barrier()
            return result
