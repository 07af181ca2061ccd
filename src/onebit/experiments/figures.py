"""The report's figures (matplotlib, Agg backend, PNG): error versus width, learning curves, LR schedules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from onebit.experiments.stats import Margin, Variant, design_name, margin_per_epoch  # noqa: E402
from onebit.train.schedules import learning_rate  # noqa: E402

STYLE = {("bn", 1): ("tab:blue", "o", "-"), ("bn", 32): ("tab:blue", "s", "--"),
         ("none", 1): ("tab:orange", "o", "-"), ("none", 32): ("tab:orange", "s", "--")}
DPI = 110


def _style(settings: dict[str, Any]) -> tuple[str, str, str]:
    return STYLE.get((settings["norm"], settings["weight_bits"]), ("tab:gray", "x", ":"))


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def error_vs_width(variants: list[Variant], title: str, path: Path) -> Path:
    """Test error (mean, std bars over seeds) against width k, one line per design x bit-depth."""
    fig, ax = plt.subplots(figsize=(6, 4))
    lines: dict[tuple, list[tuple[int, float, float]]] = {}
    for v in variants:
        s = v.summary("test_acc")
        if s.n:
            std = 0.0 if np.isnan(s.std) else 100 * s.std
            lines.setdefault((v.settings["norm"], v.settings["weight_bits"]), []).append(
                (v.settings["width"], 100 * (1 - s.mean), std))
    for i, ((norm, bits), points) in enumerate(sorted(lines.items())):
        points.sort()
        color, marker, dash = STYLE.get((norm, bits), ("tab:gray", "x", ":"))
        x, y, e = zip(*points)
        x = [w * (1 + 0.02 * (i - 1.5)) for w in x]          # a small offset keeps error bars apart
        ax.errorbar(x, y, yerr=e, color=color, marker=marker, linestyle=dash, capsize=3,
                    label=f"{design_name(norm)}, {bits}-bit")
    widths = sorted({v.settings["width"] for v in variants})
    ax.set_xticks(widths)
    ax.set_xlabel("width k")
    ax.set_ylabel("test error (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def learning_curves(variants: list[Variant], epochs_of: Callable[[str], list[dict[str, Any]]], title: str,
                    path: Path) -> Path:
    """Training and held-out error per epoch, one panel per variant: each seed thin, the seed mean bold."""
    cols = min(len(variants), 2)
    rows = (len(variants) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.4 * rows), squeeze=False, sharey=True)
    for ax, v in zip(axes.flat, variants):
        color = _style(v.settings)[0]
        per_run = [epochs_of(r["config_hash"]) for r in v.runs]
        has_val = any(e.get("val_acc") is not None for rows_ in per_run for e in rows_)
        keys = [("train_acc", "train", ":")] + ([("val_acc", "validation", "--")] if has_val else []) + \
            [("test_acc", "test", "-")]
        for key, name, dash in keys:
            curves = []
            for rows_ in per_run:
                y = np.array([np.nan if e.get(key) is None else 100 * (1 - e[key]) for e in rows_])
                curves.append(y)
                ax.plot([e["epoch"] for e in rows_], y, color=color, alpha=0.25, linewidth=0.8, linestyle=dash)
            n = min(len(c) for c in curves) if curves else 0
            if n:
                mean = np.nanmean(np.stack([c[:n] for c in curves]), axis=0)
                ax.plot(np.arange(1, n + 1), mean, color=color, linestyle=dash, linewidth=2,
                        label=f"{name} (mean of {len(curves)})")
        ax.set_title(v.label, fontsize=10)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("error (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(variants):]:
        ax.axis("off")
    fig.suptitle(title)
    return _save(fig, path)


def lr_schedules(variants: list[Variant], epochs_of: Callable[[str], list[dict[str, Any]]],
                 path: Path) -> Path:
    """Each distinct schedule as the per-iteration learning rate (line), with the rate its first run
    recorded at the last step of each epoch (markers). Steps per epoch are those of that run
    (images seen per epoch / batch size)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    seen: dict[str, Variant] = {}
    for v in variants:
        s = v.settings
        key = json.dumps([s["schedule"], s["epochs"], s["first_cycle"], s["lr"], s["lr_min"],
                          s.get("warmup_epochs", 0)])
        seen.setdefault(key, v)
    for key, v in seen.items():
        schedule, epochs, first, lr, lr_min, warmup = json.loads(key)
        recorded = epochs_of(v.runs[0]["config_hash"])
        first_epoch = recorded[0] if recorded else {}
        timed = first_epoch.get("images_per_s") is not None and first_epoch.get("epoch_time_s") is not None
        per_epoch = max(1, round(first_epoch["images_per_s"] * first_epoch["epoch_time_s"]
                                 / v.settings["batch_size"])) if timed else 100
        recorded = [e for e in recorded if e.get("lr") is not None]
        steps = np.arange(epochs * per_epoch)
        rates = [learning_rate(int(t), per_epoch, epochs, schedule, lr, lr_min, first, warmup) for t in steps]
        label = f"{schedule}, {epochs} epochs" + (f", first cycle {first}" if schedule == "restarts" else "")
        line, = ax.plot((steps + 1) / per_epoch, rates, label=f"{label} ({per_epoch} steps/epoch)")
        ax.plot([e["epoch"] for e in recorded], [e["lr"] for e in recorded], "o", color=line.get_color(),
                markersize=4)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title("learning-rate schedules (line: per iteration; dots: recorded at each epoch's last step)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def margin_limits(curves: list[dict[str, np.ndarray]], pad: float = 5.0) -> tuple[float, float, bool]:
    """y-limits (points) for margin curves: the means' range and 0, padded by ``pad`` or a quarter of the
    range; and whether a band reaches past them (a Welch band over 2 + 2 runs has ~1 degree of freedom and
    can span 100 points; drawn whole it would flatten every line)."""
    means = np.concatenate([100 * c["diff"] for c in curves] + [np.zeros(1)])
    lo, hi = float(np.nanmin(means)), float(np.nanmax(means))
    pad = max(pad, (hi - lo) / 4)
    lo, hi = lo - pad, hi + pad
    bands = np.concatenate([100 * np.r_[c["low"], c["high"]] for c in curves] + [np.zeros(1)])
    bands = bands[~np.isnan(bands)]
    return lo, hi, bool(bands.size and (bands.min() < lo or bands.max() > hi))


def margin_over_training(ms: list[Margin], epochs_of: Callable[[str], list[dict[str, Any]]], metric: str,
                         title: str, path: Path) -> Path:
    """BN minus shifted-ReLU accuracy (points) against epoch: one panel per network, one line per
    bit-depth (solid 1-bit, dashed 32-bit), with its 95% Welch band where both sides have at least 2 seeds;
    the y-axis fits the lines (:func:`margin_limits`), bands that reach past it are clipped and said so."""
    curves: dict[tuple[int, int], list[tuple[Margin, dict[str, np.ndarray]]]] = {}
    for m in ms:
        curve = margin_per_epoch(m, epochs_of, metric)
        if len(curve["epoch"]):
            s = m.bn.settings
            curves.setdefault((s["depth"], s["width"]), []).append((m, curve))
    nets = sorted(curves)
    panels = max(len(nets), 1)
    fig, axes = plt.subplots(1, panels, figsize=(1.5 + 3.6 * panels, 4), sharey=True, squeeze=False)
    lo, hi, clipped = margin_limits([c for net in nets for _, c in curves[net]])
    for ax, (depth, width) in zip(axes[0], nets):
        for m, curve in sorted(curves[(depth, width)], key=lambda mc: mc[0].bn.settings["weight_bits"]):
            bits = m.bn.settings["weight_bits"]
            color, dash = ("tab:green", "-") if bits == 1 else ("tab:purple", "--")
            ax.plot(curve["epoch"], 100 * curve["diff"], linestyle=dash, marker=".", color=color,
                    label=f"{bits}-bit ({len(m.bn.runs)} + {len(m.srelu.runs)} runs)")
            band = ~np.isnan(curve["low"])
            if band.any():
                ax.fill_between(curve["epoch"][band], 100 * curve["low"][band], 100 * curve["high"][band],
                                color=color, alpha=0.15)
        ax.axhline(0, color="0.3", linewidth=0.8)
        ax.set_ylim(lo, hi)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title(f"WRN-{depth}-{width}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(f"BN − shifted ReLU, {'validation' if metric == 'val_acc' else 'test'} "
                          "accuracy (points)")
    fig.suptitle(title + ("; bands clipped at the axes" if clipped else ""), fontsize=10)
    return _save(fig, path)
