"""The study report: ``report.md`` plus PNG figures, written from a results store.

Sections: one error-rate table per dataset (mean +/- sample std over seeds, the standard error std/sqrt(n),
n, beside the published numbers of docs/paper.md), the accuracy margin of BN over shifted ReLU with
its Welch 95% confidence interval and a sentence on its significance (see ``stats``), figures (test error
versus width, learning curves, learning-rate schedules), the cost of each variant (parameters, weight memory
at the stored bit-widths, MACs and extra BN operations per image from ``onebit.models.summary``, and the
measured training images/s), and provenance.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from onebit.experiments import figures
from onebit.experiments.stats import (CONFIDENCE, Margin, PairedDifference, Summary, Variant, config_with_defaults,
                                      design_name, format_differences, group_variants, margins, varying_settings,
                                      verdict)
from onebit.experiments.store import ResultsStore
from onebit.models.summary import summarize
from onebit.presets import PUBLISHED_ACCURACY
from onebit.train.config import TrainConfig

DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet": "ImageNet"}
METRIC_NAMES = {"val_acc": "validation", "test_acc": "test"}
# McDonnell, ICLR 2018, test error % of the BN design with cutout: (dataset, depth, width, bits) -> error.
ICLR2018_ERROR = {("cifar10", 20, 4, 1): 5.34, ("cifar100", 20, 4, 1): 23.74,
                  ("cifar10", 20, 10, 1): 3.92, ("cifar100", 20, 10, 1): 18.51,
                  ("cifar10", 26, 10, 1): 3.41, ("cifar100", 26, 10, 1): 18.50,
                  ("cifar10", 20, 10, 32): 3.46, ("cifar100", 20, 10, 32): 17.19}


def pct(x: float, digits: int = 2) -> str:
    return "–" if x is None or math.isnan(x) else f"{100 * x:.{digits}f}"


def mean_std(s: Summary, error: bool = True) -> str:
    """``mean ± std`` in percent (of the error rate 1 - acc when ``error``); std omitted for n < 2."""
    if s.n == 0:
        return "–"
    mean = 1 - s.mean if error else s.mean
    return pct(mean) if math.isnan(s.std) else f"{pct(mean)} ± {pct(s.std)}"


def published_error(settings: dict[str, Any]) -> str:
    """The published test error % for this dataset / size / design / bits, if docs/paper.md has one."""
    ds, d, k, norm, bits = (settings[x] for x in ("dataset", "depth", "width", "norm", "weight_bits"))
    parts = []
    if (d, k) == (20, 10) and (ds, norm, bits) in PUBLISHED_ACCURACY:
        parts.append(f"{100 - PUBLISHED_ACCURACY[(ds, norm, bits)]:.2f} (2019)")
    if norm == "bn" and (ds, d, k, bits) in ICLR2018_ERROR:
        parts.append(f"{ICLR2018_ERROR[(ds, d, k, bits)]:.2f} (ICLR 2018)")
    return ", ".join(parts) or "–"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt_setting(value: Any) -> str:
    return "–" if value is None else json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def error_table(variants: list[Variant]) -> str:
    extra = varying_settings(variants)
    header = ["network", "design", "weight bits", *extra, "n", "test error % (mean ± std)", "test s.e.",
              "validation error %", "validation s.e.", "best epoch (by held-out acc.)", "published test error %"]
    rows = []
    for v in variants:
        s = v.settings
        best = sorted({r["best_epoch"] for r in v.runs if r.get("best_epoch") is not None})
        rows.append([f"WRN-{s['depth']}-{s['width']}", design_name(s["norm"]), s["weight_bits"],
                     *(_fmt_setting(s.get(k)) for k in extra), v.summary("test_acc").n,
                     mean_std(v.summary("test_acc")), pct(v.summary("test_acc").sem),
                     mean_std(v.summary("val_acc")), pct(v.summary("val_acc").sem),
                     ", ".join(map(str, best)) or "–", published_error(s)])
    return markdown_table(header, rows)


def shared_settings(variants: list[Variant]) -> str:
    """The settings every variant shares that differ from TrainConfig's defaults, as ``key value`` pairs."""
    shown = {"dataset", "depth", "width", "norm", "weight_bits"} | set(varying_settings(variants))
    defaults = config_with_defaults({})
    common = {k: v for k, v in variants[0].settings.items()
              if k not in shown and all(o.settings.get(k) == v for o in variants) and defaults.get(k) != v}
    return ", ".join(f"{k} {_fmt_setting(v)}" for k, v in sorted(common.items())) or "the defaults"


def margin_sentence(m: Margin) -> str:
    s = m.bn.settings
    where = (f"On {DATASET_NAMES.get(s['dataset'], s['dataset'])} with WRN-{s['depth']}-{s['width']} and "
             f"{s['weight_bits']}-bit weights")
    na, nb = m.bn.summary().n, m.srelu.summary().n
    ahead, behind = ("BN", "shifted ReLU") if m.diff >= 0 else ("shifted ReLU", "BN")
    head = f"{where}, {ahead} is {abs(100 * m.diff):.2f} points more accurate than {behind}"
    if not m.decided:
        return f"{head}; with {na} + {nb} runs there is no confidence interval (need at least 2 seeds each)."
    ci = (f"(margin BN − shifted ReLU {100 * m.diff:+.2f} points, {CONFIDENCE:.0%} CI {100 * m.low:+.2f} to "
          f"{100 * m.high:+.2f}, Welch t over {na} + {nb} runs, p = {m.p_value:.3g})")
    if m.significant:
        return f"{head} {ci}: the interval excludes 0, so the margin is significant at the 5% level."
    return (f"{head} {ci}: the interval includes 0, so the difference is not significant at this number "
            f"of seeds.")


def margin_table(ms: list[Margin], metric: str = "test_acc") -> str:
    split = METRIC_NAMES.get(metric, metric)
    header = ["dataset", "network", "weight bits", f"BN {split} acc. %", f"shifted-ReLU {split} acc. %",
              "margin (points)", f"{CONFIDENCE:.0%} CI", "p", "significant", "verdict"]
    rows = []
    for m in ms:
        s = m.bn.settings
        ci = "–" if not m.decided else f"{100 * m.low:+.2f} to {100 * m.high:+.2f}"
        rows.append([DATASET_NAMES.get(s["dataset"], s["dataset"]), f"WRN-{s['depth']}-{s['width']}",
                     s["weight_bits"], mean_std(m.bn.summary(metric), error=False),
                     mean_std(m.srelu.summary(metric), error=False), f"{100 * m.diff:+.2f}", ci,
                     "–" if not m.decided else f"{m.p_value:.3g}",
                     "–" if not m.decided else ("yes" if m.significant else "no"), verdict(m)])
    return markdown_table(header, rows)


def format_table(diffs: list[PairedDifference], tolerance: float = 0.01) -> str:
    """bf16 vs float32 twins: both means over the common seeds, the paired difference with its interval,
    and whether the mean difference is within +-``tolerance``."""
    header = ["dataset", "network", "metric", "seeds", "float32 acc. %", "bf16 acc. %", "bf16 - float32 (points)",
              f"{CONFIDENCE:.0%} CI (paired t)", "p", f"mean within {100 * tolerance:.1f} point"]
    rows = []
    for d in diffs:
        s = d.fp32.settings
        ci = "–" if not d.decided else f"{100 * d.low:+.2f} to {100 * d.high:+.2f}"
        means = []
        for variant in (d.fp32, d.bf16):
            by_seed = {r["seed"]: r[d.metric] for r in variant.runs}
            means.append(mean_std(Summary.of(np.array([by_seed[x] for x in d.seeds], dtype=float)), error=False))
        rows.append([DATASET_NAMES.get(s["dataset"], s["dataset"]), f"WRN-{s['depth']}-{s['width']}",
                     METRIC_NAMES.get(d.metric, d.metric), len(d.seeds), *means, f"{100 * d.diff:+.2f}", ci,
                     "–" if not d.decided else f"{d.p_value:.3g}", "yes" if abs(d.diff) <= tolerance else "no"])
    return markdown_table(header, rows)


def _bytes(n: float) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def cost_table(variants: list[Variant]) -> str:
    header = ["network", "design", "weight bits", "parameters", "weight memory (stored bits)",
              "weight memory (all 32-bit)", "MACs / image", "BN ops / image", "training images/s", "device"]
    rows, seen = [], set()
    for v in variants:
        s = v.settings
        summary = summarize(TrainConfig.from_dict(s).model_config())
        rates = Summary.of(v.values("train_images_per_s"))
        rate = "–" if rates.n == 0 else (f"{rates.mean:.0f}" if math.isnan(rates.std)
                                         else f"{rates.mean:.0f} ± {rates.std:.0f}")
        devices = sorted({r.get("device") or "?" for r in v.runs})
        key = (s["dataset"], s["depth"], s["width"], s["norm"], s["weight_bits"], rate)
        if key in seen:
            continue
        seen.add(key)
        rows.append([f"WRN-{s['depth']}-{s['width']}", design_name(s["norm"]), s["weight_bits"],
                     f"{summary.params:,}", _bytes(summary.memory_bytes), _bytes(summary.memory_fp32_bytes),
                     f"{summary.macs:,}", f"{summary.bn.ops:,}", rate, "; ".join(devices)])
    return markdown_table(header, rows)


def _versions(encoded: str) -> str:
    return ", ".join(f"{k} {v}" for k, v in json.loads(encoded).items())


def short_commit(commit: str | None) -> str:
    if not commit:
        return "unknown"
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")


def machines(runs: list[dict[str, Any]]) -> str:
    """``host: hash, hash; host: ...`` -- the machine that trained each run (stores before schema 2 did
    not record it: "unrecorded")."""
    by_host: dict[str, list[str]] = {}
    for r in runs:
        by_host.setdefault(r.get("host") or "unrecorded", []).append(r["config_hash"])
    return "; ".join(f"{host}: {', '.join(hashes)}" for host, hashes in sorted(by_host.items()))


def provenance(runs: list[dict[str, Any]]) -> list[str]:
    def distinct(key: str) -> str:
        return ", ".join(sorted({str(r.get(key)) for r in runs})) or "–"
    versions = sorted({json.dumps(r["versions"], sort_keys=True) for r in runs})
    wall = sum(r.get("wall_time_s") or 0.0 for r in runs)
    return [f"* runs: {len(runs)} (sweeps: {distinct('sweep')}), total training wall time "
            f"{wall / 3600:.2f} h",
            f"* devices: {distinct('device')}",
            f"* machines (the runs each trained, by config hash): {machines(runs)}",
            f"* library versions: {'; '.join(_versions(x) for x in versions)}",
            f"* git commits: {', '.join(sorted({short_commit(r.get('git_commit')) for r in runs}))}",
            f"* recorded: {min(r['recorded_at'] for r in runs)} to {max(r['recorded_at'] for r in runs)}"]


def write_report(store_path: str | Path, out_dir: str | Path, where: list[tuple[str, str, Any]] | None = None,
                 title: str | None = None) -> Path:
    """Write ``out_dir/report.md`` and ``out_dir/figures/*.png``; returns the report's path."""
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    with ResultsStore(store_path, create=False) as store:
        runs = store.runs(where)
        with store.reading():
            curves = {r["config_hash"]: store.epochs(r["config_hash"]) for r in runs}
    if not runs:
        from onebit.experiments.store import StoreError
        raise StoreError(f"{store_path}: no runs to report" + (" (after --where)" if where else ""))
    if out_dir.exists() and not out_dir.is_dir():
        from onebit.errors import ConfigError
        raise ConfigError(f"-o {out_dir}: exists and is not a folder")
    fig_dir.mkdir(parents=True, exist_ok=True)
    variants = group_variants(runs)
    title = title or "Study report: " + ", ".join(sorted({r["sweep"] or "runs" for r in runs}))
    out = [f"# {title}", "",
           f"Generated by `onebit report` from `{Path(store_path).name}` ({len(runs)} runs, {len(variants)} "
           f"variants). Error rates are final test errors in percent: mean ± sample standard deviation over "
           f"seeds (n runs). Published numbers (docs/paper.md: McDonnell et al. 2019, Table 1, WRN-20-10; "
           f"McDonnell, ICLR 2018) come from full-length training and are shown beside matching rows only.",
           ""]
    for dataset in sorted({v.settings["dataset"] for v in variants}):
        subset = [v for v in variants if v.settings["dataset"] == dataset]
        name = DATASET_NAMES.get(dataset, dataset)
        out += [f"## {name}: error rates", "", error_table(subset), "",
                f"Settings shared by these runs (where not the defaults of `onebit train`): "
                f"{shared_settings(subset)}.", ""]
    ms = margins(variants)
    out += ["## The margin of BN over shifted ReLU", "",
            "Accuracy of the BN design minus that of the shifted-ReLU design (points), for the same dataset, "
            f"size and weight bit-depth; {CONFIDENCE:.0%} confidence interval by Welch's t over the seeds.", ""]
    if ms:
        out += [margin_table(ms), ""] + [f"* {margin_sentence(m)}" for m in ms] + [""]
        val_ms = [m for m in margins(variants, "val_acc") if m.bn.summary("val_acc").n and m.srelu.summary("val_acc").n]
        if val_ms:
            sizes = sorted({v.settings.get("val_size") for m in val_ms for v in (m.bn, m.srelu)})
            out += ["## The margin on the validation split", "",
                    f"The same margin on the images held out of the training set for validation "
                    f"(val_size {', '.join(map(str, sizes))}).", "", margin_table(val_ms, "val_acc"), ""]
        metric = "val_acc" if val_ms else "test_acc"
        out += ["## The margin over training", "",
                f"BN minus shifted-ReLU {METRIC_NAMES[metric]} accuracy after each epoch, with its {CONFIDENCE:.0%} "
                f"Welch interval where both designs have at least 2 seeds.", ""]
        for dataset in sorted({m.bn.settings["dataset"] for m in ms}):
            name = DATASET_NAMES.get(dataset, dataset)
            png = figures.margin_over_training([m for m in ms if m.bn.settings["dataset"] == dataset],
                                               curves.__getitem__, metric,
                                               f"{name}: the BN margin over training (band: {CONFIDENCE:.0%} "
                                               f"Welch interval)", fig_dir / f"margin-over-training-{dataset}.png")
            out += [f"![{name}: BN minus shifted-ReLU accuracy per epoch](figures/{png.name})", ""]
    else:
        out += ["No dataset / size / bit-depth has runs of both designs.", ""]
    diffs = [d for metric in ("val_acc", "test_acc") for d in format_differences(variants, metric)]
    if diffs:
        out += ["## Number format: bf16 autocast vs float32", "",
                "Twins that differ only in `amp`, trained with the same seeds: accuracy (mean ± sample std over "
                f"the common seeds) and the mean paired difference bf16 - float32 with its {CONFIDENCE:.0%} "
                "paired-t confidence interval.", "", format_table(diffs), ""]
    out += ["## Figures", ""]
    for dataset in sorted({v.settings["dataset"] for v in variants}):
        name = DATASET_NAMES.get(dataset, dataset)
        subset = [v for v in variants if v.settings["dataset"] == dataset]
        for depth in sorted({v.settings["depth"] for v in subset}):
            group = [v for v in subset if v.settings["depth"] == depth]
            png = figures.error_vs_width(group, f"{name}, depth {depth}: test error vs width",
                                         fig_dir / f"error-vs-width-{dataset}-d{depth}.png")
            out += [f"![{name} depth {depth}: test error versus width](figures/{png.name})", ""]
        for size in sorted({(v.settings["depth"], v.settings["width"]) for v in subset}):
            group = [v for v in subset if (v.settings["depth"], v.settings["width"]) == size]
            net = f"WRN-{size[0]}-{size[1]}"
            png = figures.learning_curves(group, curves.__getitem__, f"{name}, {net}: error per epoch",
                                          fig_dir / f"curves-{dataset}-wrn{size[0]}-{size[1]}.png")
            out += [f"![{name} {net}: training and held-out error per epoch](figures/{png.name})", ""]
    png = figures.lr_schedules(variants, curves.__getitem__, fig_dir / "lr-schedules.png")
    out += [f"![learning-rate schedules](figures/{png.name})", ""]
    out += ["## Cost", "",
            "Parameters (convolution weights plus the values every BN layer stores), weight memory at the "
            "stored bit-widths (1-bit or 32-bit convolutions, 32-bit BN values), "
            "multiply-accumulates and extra BN operations per 32x32 image (from `onebit summary`), and the "
            "measured training throughput (mean ± std over runs, on the device listed).", "",
            cost_table(variants), ""]
    out += ["## Provenance", "", *provenance(runs), ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(out))
    return path
