"""``onebit runs``: list the runs a results store holds, optionally filtered."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from onebit.errors import ConfigError

_CONDITION = re.compile(r"^\s*([A-Za-z_]\w*)\s*(<=|>=|!=|=|<|>)\s*(.*?)\s*$")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="list the runs in a results store",
                       description="List the finished runs of a results store (written by `onebit sweep`), "
                                   "one line each: config hash, model, seed, epochs, test error, best "
                                   "validation/test accuracy, training images/s and wall time.")
    p.add_argument("store", nargs="?", type=Path, default=Path("runs.db"),
                   help="the results store (default: runs.db)")
    p.add_argument("--where", "-w", action="append", default=[], metavar="KEY<op>VALUE",
                   help="keep runs where KEY (a column such as norm, depth, seed, sweep, or any training "
                        "option) compares to VALUE; op is = != < <= > >=; repeat to AND conditions, e.g. "
                        "--where norm=bn --where 'epochs>=10'")
    p.add_argument("--json", action="store_true", help="print the runs as JSON lines (config and metrics)")
    p.set_defaults(func=run)


def parse_condition(text: str) -> tuple[str, str, Any]:
    m = _CONDITION.match(text)
    if not m:
        raise ConfigError(f"--where {text!r}: expected KEY=VALUE (or != < <= > >=)")
    key, op, raw = m.groups()
    return key, op, parse_value(raw)


def parse_value(raw: str) -> Any:
    """int, float, true/false (stored as 1/0) or the string itself."""
    low = raw.lower()
    if low in ("true", "false"):
        return int(low == "true")
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def run(args: argparse.Namespace) -> int:
    from onebit.experiments.store import ResultsStore

    with ResultsStore(args.store, create=False) as store:
        rows = store.runs([parse_condition(w) for w in args.where])
    if args.json:
        for r in rows:
            print(json.dumps(r, sort_keys=True))
        return 0
    header = f"{'hash':<16}  {'model':<24} {'seed':>4} {'ep':>4}  {'test err%':>9}  {'best acc%':>9}  " \
             f"{'img/s':>7}  {'wall':>7}  sweep"
    print(header)
    for r in rows:
        err = None if r["test_acc"] is None else 1 - r["test_acc"]
        best = f"{_pct(r['best_value'])}" if r["best_value"] is not None else "-"
        rate = "-" if r["train_images_per_s"] is None else f"{r['train_images_per_s']:.0f}"
        wall = "-" if r["wall_time_s"] is None else f"{r['wall_time_s'] / 60:.1f}m"
        print(f"{r['config_hash']:<16}  {r['model']:<24} {r['seed']:>4} {r['epochs']:>4}  {_pct(err):>9}  "
              f"{best:>9}  {rate:>7}  {wall:>7}  {r['sweep'] or '-'}")
    print(f"{len(rows)} run(s) in {args.store}")
    return 0
