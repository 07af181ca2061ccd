"""The CPUs this process may use, and how busy the machine keeps them: the one home of these facts for
training's thread default, the data loaders, the sweep's jobs, the C runtime and the benchmarks."""

from __future__ import annotations

import os
import time


def usable_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity mask; all of them where that is unknown)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def _cpu_times(cpus: set[int]) -> tuple[int, int] | None:
    """(busy, total) jiffies summed over ``cpus``, from the per-CPU lines of /proc/stat."""
    busy = total = 0
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            for line in stat:
                name, *values = line.split()
                if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
                    continue
                fields = [int(v) for v in values[:8]]
                idle = fields[3] + fields[4]  # idle + iowait
                busy += sum(fields) - idle
                total += sum(fields)
    except (OSError, ValueError, IndexError):
        return None
    return (busy, total) if total else None


def busy_cpus(cpus: set[int], window_s: float = 0.3) -> float:
    """How many of ``cpus`` the machine kept busy during the next ``window_s`` seconds (0 where unknown).

    This process sleeps meanwhile, so what is measured is the other processes' load.
    """
    first = _cpu_times(cpus)
    time.sleep(window_s)
    second = _cpu_times(cpus)
    if first is None or second is None or second[1] <= first[1]:
        return 0.0
    return len(cpus) * (second[0] - first[0]) / (second[1] - first[1])
