"""How many CPU threads a training process uses when the user does not say (``num_threads = 0``).

PyTorch's OpenMP workers spin while they wait for each other. On a 2-core machine that another process
keeps busy, two spinning workers share one free core with the other process, and training runs several
times slower than with one thread (docs/performance.md, "CPU threads on a busy machine"). So the
default is the number of CPUs this process may use (its affinity mask) minus the CPUs that other
processes are busy on right now, measured from ``/proc/stat`` over a short window; at least one.
"""

from __future__ import annotations

import os
import time

from onebit.errors import warn


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


def default_threads(requested: int = 0) -> int:
    """``requested`` if positive (with a warning when it is more than the usable CPUs: threads beyond them
    only wait for each other); else the usable CPUs that no other process is busy on (at least 1)."""
    if requested > 0:
        cpus = len(usable_cpus())
        if requested > cpus:
            warn(f"{requested} threads on {cpus} usable CPU{'s' if cpus != 1 else ''}: they will wait for each "
                 f"other; --num-threads 0 picks the free CPUs")
        return requested
    cpus = usable_cpus()
    return max(1, len(cpus) - round(busy_cpus(cpus)))
