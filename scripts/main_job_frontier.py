"""The main job's time-vs-accuracy frontier: every stored run of the main-job sweeps, one point each.

x: the run's training time on this project's 2-core machine, idle, at the default thread setting,
estimated as (epochs x training images) / (the architecture's idle training images/s in its number format,
"wrn-8-1" float32, "wrn-8-1 bf16" bf16 autocast, kept with how it was measured in ``throughput.json``), so
that runs trained under other loads compare; y: validation
accuracy (the 5,000 held-out training images the choice was made on). The frontier joins the runs no
other run beats in both.

    python scripts/main_job_frontier.py docs/results/main-job
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from onebit.experiments.store import ResultsStore  # noqa: E402


def load_points(folder: Path) -> list[dict]:
    rates = json.loads((folder / "throughput.json").read_text())["images_per_s"]
    with ResultsStore(folder / "runs.db", create=False) as store:      # read-only
        runs = store.runs()
    points = []
    for run in runs:
        cfg, val_acc, test_acc, sweep = run["config"], run["val_acc"], run["test_acc"], run["sweep"]
        arch = f"wrn-{cfg['depth']}-{cfg['width']}" + (" bf16" if cfg.get("amp") else "")
        if arch not in rates or val_acc is None:
            continue
        images = 50000 - cfg["val_size"] if not cfg["train_limit"] else cfg["train_limit"]
        points.append({"arch": arch, "epochs": cfg["epochs"], "temperature": cfg["temperature"],
                       "lr": cfg["lr"], "sweep": sweep, "val_acc": 100 * val_acc,
                       "test_acc": None if test_acc is None else 100 * test_acc,
                       "seconds": cfg["epochs"] * images / rates[arch]})
    return points


def frontier(points: list[dict]) -> list[dict]:
    best, out = -1.0, []
    for p in sorted(points, key=lambda p: (p["seconds"], -p["val_acc"])):
        if p["val_acc"] > best:
            out.append(p)
            best = p["val_acc"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="holds runs.db and throughput.json; frontier.png goes there")
    args = ap.parse_args()
    points = load_points(args.folder)
    if not points:
        raise SystemExit(f"no runs with a measured architecture in {args.folder / 'runs.db'}")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arch in sorted({p["arch"] for p in points}):
        for temperature in sorted({p["temperature"] for p in points if p["arch"] == arch}):
            mine = [p for p in points if p["arch"] == arch and p["temperature"] == temperature]
            ax.scatter([p["seconds"] for p in mine], [p["val_acc"] for p in mine], s=28,
                       label=f"{arch}, T = {temperature:g}")
    front = frontier(points)
    ax.step([p["seconds"] for p in front], [p["val_acc"] for p in front], where="post", color="0.4", lw=1,
            label="frontier")
    for p in front:
        ax.annotate(f"{p['arch']} {p['epochs']}ep T={p['temperature']:g} lr={p['lr']:g}",
                    (p["seconds"], p["val_acc"]), fontsize=7, textcoords="offset points",
                    **({"xytext": (6, 4), "ha": "left"} if p["seconds"] < 150 else {"xytext": (-6, 4), "ha": "right"}))
    ax.axvline(300, color="tab:red", ls="--", lw=1, label="5-minute budget")
    ax.axhline(60, color="tab:green", ls=":", lw=1, label="60% target")
    ax.set_xlabel("estimated training time, idle 2-core CPU (s)")
    ax.set_ylabel("validation accuracy (%), 5,000 held-out images")
    ax.set_title("1-bit BN-free WRNs on CIFAR-10: accuracy vs CPU training time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.folder / "frontier.png", dpi=120)
    for p in sorted(points, key=lambda p: p["seconds"]):
        print(f"{p['arch']:9s} {p['epochs']:3d} ep  T={p['temperature']:<5g} lr={p['lr']:<5g} "
              f"{p['seconds']:6.0f} s  val {p['val_acc']:5.1f}%")


if __name__ == "__main__":
    main()
