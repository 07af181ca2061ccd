"""Accuracy against training time: every stored run one point, and the frontier no run beats on both.

x: the run's training time on an idle machine, estimated as (epochs x training images) / (its
architecture's idle training images/s in its number format: ``"wrn-8-1"`` float32, ``"wrn-8-1 bf16"`` bf16
autocast), so that runs trained under other loads compare; the rates come from a JSON file
(``{"images_per_s": {...}}``, e.g. docs/results/main-job/throughput.json, which says how it was measured).
y: validation accuracy (the held-out training images choices are made on).

    onebit report docs/results/main-job/runs.db -o docs/results/main-job --frontier docs/results/main-job/throughput.json
"""

from __future__ import annotations

import json
from pathlib import Path

from onebit.errors import ConfigError
from onebit.experiments.store import ResultsStore

TRAIN_IMAGES = 50_000     # CIFAR training split; a run trains on it minus its validation images (or a limit)


def load_points(store: Path, rates_file: Path) -> list[dict]:
    """One point per stored run whose architecture has a measured rate (runs without one are skipped)."""
    try:
        rates = json.loads(Path(rates_file).read_text())["images_per_s"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{rates_file}: not a throughput file with an 'images_per_s' table ({exc})") from None
    with ResultsStore(store, create=False) as results:
        runs = results.runs()
    points = []
    for run in runs:
        cfg, val_acc, test_acc = run["config"], run["val_acc"], run["test_acc"]
        arch = f"wrn-{cfg['depth']}-{cfg['width']}" + (" bf16" if cfg.get("amp") else "")
        if arch not in rates or val_acc is None:
            continue
        images = cfg["train_limit"] or TRAIN_IMAGES - cfg["val_size"]
        points.append({"arch": arch, "epochs": cfg["epochs"], "temperature": cfg["temperature"], "lr": cfg["lr"],
                       "sweep": run["sweep"], "val_acc": 100 * val_acc,
                       "test_acc": None if test_acc is None else 100 * test_acc,
                       "seconds": cfg["epochs"] * images / rates[arch]})
    return points


def frontier(points: list[dict]) -> list[dict]:
    """The points no other point beats in both time and validation accuracy, fastest first."""
    best, out = -1.0, []
    for p in sorted(points, key=lambda p: (p["seconds"], -p["val_acc"])):
        if p["val_acc"] > best:
            out.append(p)
            best = p["val_acc"]
    return out


def plot_frontier(points: list[dict], path: Path, budget_s: float = 300, target: float = 60) -> Path:
    """frontier.png: the points by architecture and temperature, the frontier, the budget and the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arch in sorted({p["arch"] for p in points}):
        for temperature in sorted({p["temperature"] for p in points if p["arch"] == arch},
                                  key=lambda t: (t is None, t or 0)):
            mine = [p for p in points if p["arch"] == arch and p["temperature"] == temperature]
            label = f"{arch}, T = {temperature:g}" if temperature is not None else arch
            ax.scatter([p["seconds"] for p in mine], [p["val_acc"] for p in mine], s=28, label=label)
    front = frontier(points)
    ax.step([p["seconds"] for p in front], [p["val_acc"] for p in front], where="post", color="0.4", lw=1,
            label="frontier")
    for p in front:
        ax.annotate(f"{p['arch']} {p['epochs']}ep T={p['temperature']} lr={p['lr']:g}",
                    (p["seconds"], p["val_acc"]), fontsize=7, textcoords="offset points",
                    **({"xytext": (6, 4), "ha": "left"} if p["seconds"] < budget_s / 2
                       else {"xytext": (-6, 4), "ha": "right"}))
    ax.axvline(budget_s, color="tab:red", ls="--", lw=1, label=f"{budget_s / 60:g}-minute budget")
    ax.axhline(target, color="tab:green", ls=":", lw=1, label=f"{target:g}% target")
    ax.set_xlabel("estimated training time, idle machine (s)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("accuracy vs training time, every stored run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def format_points(points: list[dict]) -> str:
    return "\n".join(f"{p['arch']:9s} {p['epochs']:3d} ep  T={p['temperature']!s:<5} lr={p['lr']:<5g} "
                     f"{p['seconds']:6.0f} s  val {p['val_acc']:5.1f}%"
                     for p in sorted(points, key=lambda p: p["seconds"])) + "\n"
