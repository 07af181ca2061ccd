"""``onebit report``: a Markdown report with PNG figures from a results store."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write a Markdown report (tables, BN margin, figures) from a results store",
                       description="Write DIR/report.md and PNG figures from a results store: error rate "
                                   "mean +/- std over seeds per dataset and variant beside the published "
                                   "numbers, the accuracy margin of BN over shifted ReLU with a t-based 95% "
                                   "confidence interval, test error versus width, training curves, the "
                                   "learning-rate schedules, and parameters / weight memory / MACs / "
                                   "measured training images/s per variant.")
    p.add_argument("store", type=Path, help="the results store (written by `onebit sweep`)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--where", "-w", action="append", default=[], metavar="KEY<op>VALUE",
                   help="report only runs matching this condition (as in `onebit runs --where`)")
    p.add_argument("--title", default=None, help="report title (default: from the store's sweep names)")
    p.add_argument("--frontier", type=Path, default=None, metavar="RATES.json",
                   help="instead of the report: DIR/frontier.png, validation accuracy against training time "
                        "estimated from the idle images/s per architecture in RATES.json (e.g. "
                        "docs/results/main-job/throughput.json), and the points as text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from onebit.commands.runs import parse_condition
    from onebit.experiments.report import write_report

    if args.frontier is not None:
        from onebit.errors import OnebitError
        from onebit.experiments.frontier import format_points, load_points, plot_frontier

        if args.where or args.title:
            raise OnebitError("--frontier plots every run of the store; drop --where / --title")
        points = load_points(args.store, args.frontier)
        if not points:
            raise OnebitError(f"no run in {args.store} has an architecture measured in {args.frontier}")
        print(format_points(points), end="")
        print(f"wrote {plot_frontier(points, args.output / 'frontier.png')}")
        return 0

    path = write_report(args.store, args.output, where=[parse_condition(w) for w in args.where],
                        title=args.title)
    print(f"wrote {path}")
    return 0
