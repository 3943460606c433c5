"""CPU threads for a command, chosen once before torch starts.

Torch's default (one thread per core) oversubscribes a shared or busy machine: on 2 busy cores
the quickstart ran at 4.7-6.5 s per step with the default and at 2.4 steps/s with one thread
(issue 18). The models this project runs on a CPU are small, and their per-op work gains little
beyond a few threads, so the choice is the cores that are free now (``os.cpu_count()`` of this
process's affinity minus the 1-minute load average), at most :data:`MAX_THREADS`, at least one.
``OMP_NUM_THREADS`` set by the user wins and nothing is printed; otherwise the choice is printed
once (to stderr) and passed on, through the environment, to DataLoader workers and DDP ranks.
"""

from __future__ import annotations

import os
import sys

#: the most threads chosen without being asked: small CPU models gain little beyond it
MAX_THREADS = 4


def free_cores() -> int:
    """Cores of this process's affinity not busy by the 1-minute load average (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return max(1, int((cores or 1) - load + 0.5))


def choose_threads() -> int:
    """Set the thread count (``OMP_NUM_THREADS``, and torch's if torch is already imported)
    unless the user set ``OMP_NUM_THREADS``; return the count in force."""
    given = os.environ.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given)
    count = min(MAX_THREADS, free_cores())
    os.environ["OMP_NUM_THREADS"] = str(count)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(count)
    print(
        f"CPU threads: {count} (free cores now, at most {MAX_THREADS}; set OMP_NUM_THREADS to "
        "choose)",
        file=sys.stderr,
    )
    return count
