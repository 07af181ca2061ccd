"""Aggregating stored runs: variants (runs that differ only in seed), mean/std/n, and the BN margin.

* A *variant* is a set of runs whose configs agree on every setting but the seed (and settings that do not
  change results: paths, devices, threads). Its error rate is summarised as mean, sample std (ddof = 1)
  and n over seeds.
* The paper's key quantity (McDonnell et al. 2019, sec. 4) is the accuracy margin of BN over shifted ReLU:
  ``margin = mean(acc_BN) - mean(acc_shifted-ReLU)`` for the same dataset, network size and weight
  bit-depth (the two recipes' own schedule, epochs and head temperature may differ). Its 95% confidence
  interval is Welch's t interval over the seeds of the two variants (unequal variances,
  Welch-Satterthwaite degrees of freedom; ``scipy.stats.ttest_ind(equal_var=False)``); the margin is
  called significant when the interval excludes 0.
* The number format (``amp``: bf16 autocast or float32) is compared on twins: variants that differ only in
  ``amp``, trained with the same seeds. ``diff = mean over seeds of (acc_bf16 - acc_fp32)`` with the paired
  t interval (``scipy.stats.ttest_rel``), which removes the seed-to-seed spread the two share.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from onebit.train.config import NOT_RESULT_SETTINGS, TrainConfig

# Settings that do not change a run's results (TrainConfig.hash leaves them out too) or are per-run.
NOT_VARIANT = NOT_RESULT_SETTINGS | {"seed"}
# Settings that belong to a design's recipe, not to the comparison: BN and shifted-ReLU nets are paired
# for the margin even when these differ.
RECIPE = {"norm", "schedule", "epochs", "first_cycle", "temperature", "bn_recompute", "lr_min"}
CONFIDENCE = 0.95


@dataclass
class Variant:
    """Runs that differ only in their seed."""

    key: str                                  # canonical JSON of the shared settings
    settings: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        s = self.settings
        return f"WRN-{s['depth']}-{s['width']} {design_name(s['norm'])} {s['weight_bits']}-bit"

    def values(self, metric: str) -> np.ndarray:
        """The stored final ``metric`` of every run that has it, in seed order."""
        runs = sorted(self.runs, key=lambda r: r["seed"])
        return np.array([r[metric] for r in runs if r.get(metric) is not None], dtype=float)

    def summary(self, metric: str = "test_acc") -> "Summary":
        return Summary.of(self.values(metric))


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float           # sample std (ddof = 1); nan for n < 2
    n: int

    @property
    def sem(self) -> float:
        """Standard error of the mean, std / sqrt(n); nan for n < 2."""
        return self.std / math.sqrt(self.n) if self.n > 1 else math.nan

    @classmethod
    def of(cls, values: np.ndarray) -> "Summary":
        n = len(values)
        if n == 0:
            return cls(math.nan, math.nan, 0)
        return cls(float(values.mean()), float(values.std(ddof=1)) if n > 1 else math.nan, n)


@dataclass(frozen=True)
class Margin:
    """BN minus shifted-ReLU accuracy (fractions) for one dataset, size and bit-depth."""

    bn: Variant
    srelu: Variant
    diff: float
    low: float           # CI bounds; nan when either side has fewer than 2 runs
    high: float
    p_value: float
    dof: float

    @property
    def decided(self) -> bool:
        return not math.isnan(self.low)

    @property
    def significant(self) -> bool:
        return self.decided and (self.low > 0 or self.high < 0)


@dataclass(frozen=True)
class PairedDifference:
    """bf16 minus float32 accuracy (fractions) of two variants that differ only in ``amp``, paired by seed."""

    fp32: Variant
    bf16: Variant
    metric: str
    seeds: tuple[int, ...]
    diff: float
    low: float           # CI bounds; nan with fewer than 2 paired seeds
    high: float
    p_value: float

    @property
    def decided(self) -> bool:
        return not math.isnan(self.low)


def format_differences(variants: list[Variant], metric: str = "test_acc") -> list[PairedDifference]:
    """Every float32 / bf16 pair of variants (same settings but ``amp``), compared on their common seeds."""
    pairs: dict[str, dict[bool, Variant]] = {}
    for v in variants:
        if isinstance(v.settings.get("amp"), bool):
            pairs.setdefault(variant_key(v.settings, NOT_VARIANT | {"amp"}), {})[v.settings["amp"]] = v
    out = []
    for pair in pairs.values():
        if set(pair) != {False, True}:
            continue
        fp32 = {r["seed"]: r.get(metric) for r in pair[False].runs}
        bf16 = {r["seed"]: r.get(metric) for r in pair[True].runs}
        seeds = tuple(sorted(s for s in fp32 if s in bf16 and fp32[s] is not None and bf16[s] is not None))
        if not seeds:
            continue
        a, b = np.array([fp32[s] for s in seeds]), np.array([bf16[s] for s in seeds])
        low = high = p = math.nan
        if len(seeds) >= 2:
            res = stats.ttest_rel(b, a)
            ci = res.confidence_interval(CONFIDENCE)
            low, high, p = float(ci.low), float(ci.high), float(res.pvalue)
        out.append(PairedDifference(pair[False], pair[True], metric, seeds, float((b - a).mean()), low, high, p))
    return sorted(out, key=lambda d: sort_key(d.fp32))


def margin_per_epoch(m: Margin, epochs_of, metric: str = "val_acc") -> dict[str, np.ndarray]:
    """The BN margin epoch by epoch, from the runs' per-epoch metrics: ``epoch``, ``diff`` (mean BN minus
    mean shifted ReLU) and its Welch interval ``low`` / ``high`` (nan with fewer than 2 runs a side), over the
    epochs every run of both variants recorded ``metric``."""
    def table(v: Variant) -> list[dict[int, float]]:
        return [{e["epoch"]: e[metric] for e in epochs_of(r["config_hash"]) if e.get(metric) is not None}
                for r in v.runs]
    bn, srelu = table(m.bn), table(m.srelu)
    common = sorted(set.intersection(*(set(t) for t in bn + srelu))) if bn and srelu else []
    out = {"epoch": np.array(common, dtype=int), "diff": [], "low": [], "high": []}
    for e in common:
        a, b = np.array([t[e] for t in bn]), np.array([t[e] for t in srelu])
        low, high, _, _ = welch_interval(a, b)
        out["diff"].append(a.mean() - b.mean())
        out["low"].append(low)
        out["high"].append(high)
    return {k: np.array(v, dtype=float) if k != "epoch" else v for k, v in out.items()}


def verdict(m: Margin) -> str:
    """The margin in the paper's terms: BN ahead, shifted ReLU ahead (interval excludes 0), else none."""
    if not m.significant:
        return "no significant difference" if m.decided else "undecided (fewer than 2 seeds)"
    return "BN ahead" if m.diff > 0 else "shifted ReLU ahead"


def design_name(norm: str) -> str:
    return "BN" if norm == "bn" else "shifted ReLU"


def variant_key(config: dict[str, Any], drop: set[str] = NOT_VARIANT) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in drop}, sort_keys=True)


def config_with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A stored config completed with today's TrainConfig defaults (runs recorded before an option
    existed ran with what is now its default)."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    return {**defaults, **config}


def group_variants(runs: list[dict[str, Any]]) -> list[Variant]:
    """Stored runs grouped into variants, sorted by dataset, depth, width, design and bits."""
    groups: dict[str, Variant] = {}
    for run in runs:
        config = config_with_defaults(run["config"])
        key = variant_key(config)
        if key not in groups:
            groups[key] = Variant(key, {k: v for k, v in config.items() if k not in NOT_VARIANT})
        groups[key].runs.append(run)
    return sorted(groups.values(), key=sort_key)


def sort_key(v: Variant) -> tuple:
    s = v.settings
    return (s["dataset"], s["depth"], s["width"], s["norm"] != "bn", s["weight_bits"], v.key)


def varying_settings(variants: list[Variant]) -> list[str]:
    """Settings (besides dataset, depth, width, norm and bits) whose value differs between variants."""
    shown = {"dataset", "depth", "width", "norm", "weight_bits"}
    keys = sorted({k for v in variants for k in v.settings} - shown)
    return [k for k in keys if len({json.dumps(v.settings.get(k)) for v in variants}) > 1]


def welch_interval(a: np.ndarray, b: np.ndarray,
                   confidence: float = CONFIDENCE) -> tuple[float, float, float, float]:
    """(low, high, p, dof) of Welch's t interval for mean(a) - mean(b); nans if either has < 2 values."""
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan, math.nan, math.nan
    if a.std() == 0 and b.std() == 0:            # no spread: the difference is exact
        d = float(a.mean() - b.mean())
        return d, d, (1.0 if d == 0 else 0.0), math.inf
    with warnings.catch_warnings():      # two seeds with accuracies equal to a few ulps: a near-zero spread,
        warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)    # which is the answer
        res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(confidence)
    return float(ci.low), float(ci.high), float(res.pvalue), float(res.df)


def margins(variants: list[Variant], metric: str = "test_acc") -> list[Margin]:
    """Every BN / shifted-ReLU pair that agrees on all settings outside the two recipes."""
    by_pair: dict[str, dict[str, list[Variant]]] = {}
    for v in variants:
        key = variant_key(v.settings, NOT_VARIANT | RECIPE)
        by_pair.setdefault(key, {"bn": [], "none": []})[v.settings["norm"]].append(v)
    out = []
    for pair in by_pair.values():
        for bn in pair["bn"]:
            for srelu in pair["none"]:
                a, b = bn.values(metric), srelu.values(metric)
                if len(a) == 0 or len(b) == 0:
                    continue
                low, high, p, dof = welch_interval(a, b)
                out.append(Margin(bn, srelu, float(a.mean() - b.mean()), low, high, p, dof))
    return sorted(out, key=lambda m: sort_key(m.bn))
