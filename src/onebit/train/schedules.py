"""Per-iteration learning-rate schedules of the reference recipe (McDonnell et al. 2019, sec. 3.2).

* ``cosine``: one cycle over the whole run, lr(t) = lr_min + (lr_max - lr_min) * (1 + cos(pi t / T)) / 2.
* ``restarts`` (SGDR, Loshchilov & Hutter 2017): cycles of first, 2*first, 4*first, ... epochs
  (2, 4, ..., 128 = 254 epochs for CIFAR; 2..32 = 62 for ImageNet), the same cosine within each cycle,
  restarting at lr_max. If the run's epochs do not end on a cycle boundary the last cycle is cut short.
* warm-up (optional, not the paper's): over the first ``warmup_epochs`` the schedule's rate is scaled by
  (t + 1) / (warmup_epochs * steps per epoch), a linear ramp up to the schedule.
"""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "restarts")


def restart_cycles(epochs: int, first_cycle: int = 2) -> list[int]:
    """Cycle lengths in epochs: first, 2*first, ... with the last one cut to fit ``epochs``."""
    cycles, total, length = [], 0, first_cycle
    while total < epochs:
        cycles.append(min(length, epochs - total))
        total += cycles[-1]
        length *= 2
    return cycles


def cosine(t: float, period: float, lr_max: float, lr_min: float) -> float:
    return lr_min + (lr_max - lr_min) * 0.5 * (1.0 + math.cos(math.pi * t / period))


def learning_rate(step: int, steps_per_epoch: int, epochs: int, schedule: str, lr_max: float,
                  lr_min: float, first_cycle: int = 2, warmup_epochs: int = 0) -> float:
    """The learning rate for optimizer step ``step`` (0-based, counted over the whole run)."""
    rate = _scheduled(step, steps_per_epoch, epochs, schedule, lr_max, lr_min, first_cycle)
    warmup = warmup_epochs * steps_per_epoch
    return rate * (step + 1) / warmup if step < warmup else rate


def _scheduled(step: int, steps_per_epoch: int, epochs: int, schedule: str, lr_max: float, lr_min: float,
               first_cycle: int) -> float:
    if schedule == "cosine":
        return cosine(step, epochs * steps_per_epoch, lr_max, lr_min)
    if schedule == "restarts":
        start = 0
        for cycle in restart_cycles(epochs, first_cycle):
            length = cycle * steps_per_epoch
            if step < start + length:
                return cosine(step - start, length, lr_max, lr_min)
            start += length
        return lr_min
    raise ValueError(f"unknown schedule {schedule!r}; choose from {SCHEDULES}")
