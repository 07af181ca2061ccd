"""How many CPU threads a training process uses when the user does not say (``num_threads = 0``).

PyTorch's OpenMP workers spin while they wait for each other. On a 2-core machine that another process
keeps busy, two spinning workers share one free core with the other process, and training runs several
times slower than with one thread (docs/performance.md, "CPU threads on a busy machine"). So the
default is the number of CPUs this process may use (its affinity mask) minus the CPUs that other
processes are busy on right now, measured from ``/proc/stat`` over a short window; at least one.
"""

from __future__ import annotations

from onebit.cpus import busy_cpus, usable_cpus
from onebit.errors import warn


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
