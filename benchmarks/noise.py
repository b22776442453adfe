"""Other work on the machine: CPU used by processes outside the harness's own process tree.

The benchmarks share the machine with whatever else runs (a test suite, another benchmark). A run
during which other processes used more than `LIMIT` of a core is repeated once they calm down, and
the figure kept is reported with the foreign load it ran beside.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
#: Foreign CPU (in cores) above which a run is repeated.
LIMIT = 0.10
_TICK = os.sysconf("SC_CLK_TCK")


Snapshot = tuple[int, dict[int, tuple[int, int]]]


def _snapshot() -> Snapshot:
    """Ticks the CPUs spent in user space and system calls, and pid → (parent pid, ticks) of every
    process, its reaped children's ticks included (so a finished wrk still counts as ours)."""
    with open("/proc/stat") as stat:
        user, nice, system = (int(v) for v in stat.readline().split()[1:4])
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(entry.name)] = (int(fields[1]), sum(int(v) for v in fields[11:15]))
    return user + nice + system, found


def _ours(*processes: dict[int, tuple[int, int]]) -> set[int]:
    parents = {pid: ppid for found in processes for pid, (ppid, _) in found.items()}
    ours = {os.getpid()}
    changed = True
    while changed:
        before = len(ours)
        ours |= {pid for pid, ppid in parents.items() if ppid in ours}
        changed = len(ours) != before
    return ours


def foreign_cores(before: Snapshot, after: Snapshot, seconds: float) -> float:
    """Cores' worth of CPU used by everything but the harness's own process tree. Kernel softirq
    time (mostly the benchmark's own loopback traffic) is left out on both sides."""
    ours = _ours(before[1], after[1])
    mine = sum(t - before[1].get(pid, (0, 0))[1] for pid, (_, t) in after[1].items() if pid in ours)
    return max(0, after[0] - before[0] - mine) / _TICK / max(seconds, 1e-3)


def wait_quiet(max_wait: float = 8.0, window: float = 1.0) -> float:
    """Wait (up to `max_wait`) until others use less than `LIMIT`; the last foreign load seen."""
    deadline = time.monotonic() + max_wait
    while True:
        before, started = _snapshot(), time.monotonic()
        time.sleep(window)
        load = foreign_cores(before, _snapshot(), time.monotonic() - started)
        if load <= LIMIT or time.monotonic() >= deadline:
            return load


def measured(run: Callable[[], T], label: str, attempts: int = 2) -> tuple[T, float]:
    """`run()` and the foreign CPU beside it; repeated (after waiting for quiet) while that is high,
    keeping the attempt that ran beside the least foreign load."""
    tries: list[tuple[float, T]] = []
    for attempt in range(1, attempts + 1):
        before, started = _snapshot(), time.monotonic()
        value = run()
        load = foreign_cores(before, _snapshot(), time.monotonic() - started)
        tries.append((load, value))
        if load <= LIMIT:
            break
        if attempt < attempts:
            print(f"  {label}: other processes used {load:.0%} of a core meanwhile; again", flush=True)
            wait_quiet()
    load, value = min(tries, key=lambda t: t[0])
    return value, load
