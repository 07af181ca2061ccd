"""Sweep files: a TOML grid of training runs, expanded into resolved TrainConfigs.

A sweep file has these tables (all optional but ``[base]`` or ``[grid]``)::

    [sweep]                 # name (default: the file's stem), store and runs folder
    name = "cpu-study"
    store = "runs.db"       # relative to the sweep file (default: runs.db beside it)
    runs = "cpu-study-runs" # run folders go here, one per config hash (default: <stem>-runs/)

    [base]                  # a preset plus any TrainConfig option
    preset = "cifar10-tiny"
    epochs = 3
    data_dir = "${ONEBIT_DATA:-../../shared/data/cifar10}"

    [grid]                  # axes: every combination is one run ("preset" may be an axis too)
    norm = ["bn", "none"]
    weight_bits = [1, 32]
    seed = [0, 1, 2]

    [[rule]]                # conditional settings, applied in order to every matching run
    when = {norm = "bn"}
    set = {schedule = "restarts"}

    [[exclude]]             # drop runs whose settings match all of these
    norm = "bn"
    weight_bits = 32

    [[include]]             # extra runs: base + these settings (rules apply, excludes do not)
    depth = 14
    width = 1

Settings resolve as preset < base < grid point (or include) < rules. A rule or exclude value that is a
list matches any of its items. ``data_dir`` may name environment variables (``$VAR``, ``${VAR}``,
``${VAR:-default}``); a relative data_dir is taken relative to the sweep file, so a sweep file is portable.
The config hash leaves data_dir out, so the same run has the same hash on every machine. Automatic bf16
(``amp`` unset) is decided where the sweep is planned, for that machine's device; on a cluster whose
workers differ from the planning machine (GPUs, or CPUs without native bf16), set ``amp`` in the sweep.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from onebit.errors import ConfigError
from onebit.presets import PRESETS
from onebit.train.config import REFERENCE_PREFIX, TrainConfig
from onebit.train.precision import resolve_amp

TABLES = {"sweep", "base", "grid", "rule", "exclude", "include"}
MAX_RUNS = 10_000        # grid points + includes of one sweep file: checked before anything is expanded
SWEEP_KEYS = {"name", "store", "runs", "description"}
_ENV = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)")


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its resolved config, its hash and its folder."""

    config: TrainConfig
    config_hash: str
    run_dir: Path
    preset: str | None
    point: dict[str, Any]            # the grid values (or include settings) that made this run

    @property
    def label(self) -> str:
        shown = " ".join(f"{k}={v}" for k, v in self.point.items())
        return f"{self.config.model_config().name} seed={self.config.seed} [{shown}] {self.config_hash}"


@dataclass
class Sweep:
    name: str
    path: Path
    store: Path
    runs_dir: Path
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    rules: list[dict[str, dict[str, Any]]] = field(default_factory=list)
    exclude: list[dict[str, Any]] = field(default_factory=list)
    include: list[dict[str, Any]] = field(default_factory=list)
    description: str = ""

    def expand(self) -> list[PlannedRun]:
        """Every run of the sweep, in grid order (last axis fastest), duplicates removed."""
        keys = list(self.grid)
        points = [dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))]
        if not keys and self.include:
            points = []          # only the listed runs
        planned, seen = [], set()
        for point, is_include in [(p, False) for p in points] + [(p, True) for p in self.include]:
            settings = self.resolve(point)
            if not is_include and any(_matches(settings, ex) for ex in self.exclude):
                continue
            run = self._plan(settings, point)
            if run.config_hash not in seen:
                seen.add(run.config_hash)
                planned.append(run)
        return planned

    def resolve(self, point: dict[str, Any]) -> dict[str, Any]:
        """preset < base < point < matching rules, as one dict of settings (``preset`` kept)."""
        preset = point.get("preset", self.base.get("preset"))
        settings: dict[str, Any] = {}
        if preset is not None:
            if preset not in PRESETS:
                raise ConfigError(f"{self.path}: unknown preset {preset!r}; `onebit presets` lists them")
            settings.update(PRESETS[preset][1])
        settings.update({k: v for k, v in self.base.items() if k != "preset"})
        settings.update({k: v for k, v in point.items() if k != "preset"})
        settings["preset"] = preset
        for rule in self.rules:
            if _matches(settings, rule["when"]):
                settings.update(rule["set"])
        return settings

    def _plan(self, settings: dict[str, Any], point: dict[str, Any]) -> PlannedRun:
        options = {k: v for k, v in settings.items() if k != "preset"}
        for key in ("data_dir", "teacher"):          # paths in a sweep file are relative to it
            if isinstance(options.get(key), str) and not options[key].startswith(REFERENCE_PREFIX):
                options[key] = resolve_path(options[key], self.path.parent)
        shown = ", ".join(f"{k}={v!r}" for k, v in point.items()) or "base"
        try:
            cfg = TrainConfig.from_dict(options, source=f"{self.path}: run [{shown}]")
        except TypeError as exc:
            raise ConfigError(f"{self.path}: run [{shown}]: an option has a value of the wrong type ({exc})") \
                from None
        if cfg.amp is None:   # automatic bf16: decided here, so the hash names the format the run trains in
            cfg = cfg.replace(amp=resolve_amp(None, cfg.device))
        digest = cfg.hash()
        return PlannedRun(cfg, digest, self.runs_dir / digest, settings.get("preset"), dict(point))


def resolve_path(text: str, relative_to: Path) -> str:
    """Expand ``$VAR`` / ``${VAR}`` / ``${VAR:-default}`` and ``~``; a relative result is taken from
    ``relative_to``."""
    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(3)
        if name in os.environ:
            return os.environ[name]
        if m.group(2) is not None:
            return m.group(2)
        raise ConfigError(f"data_dir {text!r} uses ${name}, which is not set")
    expanded = Path(_ENV.sub(sub, text)).expanduser()
    if not expanded.is_absolute():
        expanded = (relative_to / expanded).resolve()
    return str(expanded)


def _matches(settings: dict[str, Any], condition: dict[str, Any]) -> bool:
    for key, wanted in condition.items():
        options = wanted if isinstance(wanted, list) else [wanted]
        if settings.get(key) not in options:
            return False
    return True


def _check_keys(where: str, table: dict[str, Any], path: Path) -> None:
    known = set(TrainConfig.__dataclass_fields__) | {"preset"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown option(s) in {where}: {', '.join(unknown)}")


def load_sweep(path: str | Path) -> Sweep:
    """Parse and check a sweep file (see the module docstring for the format)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} not found")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not a usable sweep file (nested too deeply)") from None
    unknown = sorted(set(data) - TABLES)
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {', '.join(unknown)}; expected {', '.join(sorted(TABLES))}")
    for name in ("sweep", "base", "grid"):
        if not isinstance(data.get(name, {}), dict):
            raise ConfigError(f"{path}: `{name}` must be a table ([{name}]), got {type(data[name]).__name__}")
    for name in ("rule", "exclude", "include"):
        tables = data.get(name, [])
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise ConfigError(f"{path}: `{name}` must be an array of tables ([[{name}]])")
    meta = data.get("sweep", {})
    bad = sorted(set(meta) - SWEEP_KEYS)
    if bad:
        raise ConfigError(f"{path}: unknown key(s) in [sweep]: {', '.join(bad)}")
    for key, value in meta.items():
        if not isinstance(value, str):
            raise ConfigError(f"{path}: [sweep] {key} must be a string, got {value!r}")
    base = data.get("base", {})
    grid = data.get("grid", {})
    _check_keys("[base]", base, path)
    _check_keys("[grid]", grid, path)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid axis {key!r} must be a non-empty list")
    points = math.prod(len(v) for v in grid.values()) if grid else 0
    if points + len(data.get("include", [])) > MAX_RUNS:
        raise ConfigError(f"{path}: the grid has {points:,} points (+ {len(data.get('include', []))} includes), "
                          f"above the limit of {MAX_RUNS:,} runs per sweep file")
    rules = data.get("rule", [])
    for i, rule in enumerate(rules):
        if set(rule) != {"when", "set"} or not isinstance(rule["when"], dict) or not isinstance(rule["set"], dict):
            raise ConfigError(f"{path}: [[rule]] {i + 1} needs exactly a `when` table and a `set` table")
        _check_keys(f"[[rule]] {i + 1}", {**rule["when"], **rule["set"]}, path)
    exclude, include = data.get("exclude", []), data.get("include", [])
    for i, table in enumerate(exclude):
        _check_keys(f"[[exclude]] {i + 1}", table, path)
    for i, table in enumerate(include):
        _check_keys(f"[[include]] {i + 1}", table, path)
    if not base and not grid and not include:
        raise ConfigError(f"{path}: a sweep needs a [base], [grid] or [[include]] table")
    here = path.parent
    stem = path.stem
    return Sweep(name=str(meta.get("name", stem)), path=path.resolve(),
                 store=(here / meta.get("store", "runs.db")).resolve(),
                 runs_dir=(here / meta.get("runs", f"{stem}-runs")).resolve(),
                 base=base, grid=grid, rules=rules, exclude=exclude, include=include,
                 description=str(meta.get("description", "")))
