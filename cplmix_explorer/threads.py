"""How many CPU threads training uses: the ``threads`` option, or by default the cores this process may use.

A machine's core count overstates what a process can use when its CPU affinity is narrowed (``taskset``, a
batch scheduler) or a container caps its CPU time (cgroup ``cpu.max``); torch's default thread count follows
the core count, and more threads than usable cores made training several times slower (each step waits for
its slowest thread). Standard library only, so that it can be imported anywhere.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .config import cli_flag
from .errors import CplmixError

#: Where the unified (v2) cgroup hierarchy is mounted; its cpu.max caps the CPU time of the processes in it.
CGROUP_ROOT = Path("/sys/fs/cgroup")


def affinity_cpus() -> int:
    """CPUs this process may run on (its affinity set; the machine's count where affinity is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def cgroup_cpu_limit(root: Path | None = None) -> float | None:
    """CPUs' worth of time the process's cgroups allow (quota / period of ``cpu.max``, the smallest along
    the path to the root, cgroup v1's ``cpu.cfs_quota_us`` likewise), None when no quota is set."""
    root = CGROUP_ROOT if root is None else root
    limits = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and controllers == "":  # v2: cpu.max in the group and each ancestor
            group = root / path.lstrip("/")
            for folder in [group, *group.parents]:
                if not folder.is_relative_to(root):
                    break
                limits.append(_cpu_max(folder / "cpu.max"))
        elif "cpu" in controllers.split(","):  # v1
            for folder in (root / controllers / path.lstrip("/"), root / "cpu", root / "cpu,cpuacct"):
                limits.append(_cfs_quota(folder))
    limits = [limit for limit in limits if limit is not None]
    return min(limits) if limits else None


def _cpu_max(path: Path) -> float | None:
    try:
        quota, period = path.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _cfs_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def available_cpus() -> int:
    """Cores this process can keep busy: its affinity set, capped by its cgroup CPU quota (rounded down,
    at least 1)."""
    count = affinity_cpus()
    quota = cgroup_cpu_limit()
    if quota is not None:
        count = min(count, max(1, math.floor(quota)))
    return max(1, count)


def _environment_limit() -> int | None:
    """OMP_NUM_THREADS when set to a positive integer: the user's own cap on threads per process."""
    try:
        value = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return value if value > 0 else None


def resolve_threads(threads: int | None, reserve: int = 0) -> int:
    """Threads to train with: ``threads`` when given, else the available cores (at most OMP_NUM_THREADS
    when set) less ``reserve`` (the app keeps one core for its server), at least 1."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise CplmixError(f"invalid value for {cli_flag('threads')}: {threads!r} is not a positive whole number")
        return threads
    count = available_cpus() - max(0, int(reserve))
    limit = _environment_limit()
    if limit is not None:
        count = min(count, limit)
    return max(1, count)


def apply_threads(threads: int | None, reserve: int = 0) -> int:
    """Resolve the thread count and set it for torch in this process; returns the number used."""
    import torch  # lazy: the CLI imports this module at start-up; torch loads when training does

    used = resolve_threads(threads, reserve)
    if torch.get_num_threads() != used:
        torch.set_num_threads(used)
    return used
