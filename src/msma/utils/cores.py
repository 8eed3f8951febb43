"""The CPUs this process may use."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path


def cgroup_cpu_limit(
    proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")
) -> float | None:
    """The CPU quota of this process's control group in CPUs (e.g. 1.5 for ``cpu.max`` = ``150000 100000``), the
    smallest along the group and its ancestors; None where no quota is set or the files cannot be read.

    Reads cgroup v2's ``cpu.max`` and cgroup v1's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (``-1``: none), the
    way container runtimes express ``--cpus``: a container may see every core of its host in its affinity mask and
    still be allowed only a fraction of them.

    Args:
        proc_cgroup: the process's ``/proc/self/cgroup`` (lines ``id:controllers:path``).
        root: where the cgroup file systems are mounted.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits: list[float] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, group = parts
        rel = Path(group.lstrip("/"))
        if controllers == "":  # cgroup v2 (unified)
            bases, reader = [root, root / "unified"], _v2_limit
        elif "cpu" in controllers.split(","):
            bases, reader = list(dict.fromkeys([root / controllers, root / "cpu", root / "cpu,cpuacct"])), _v1_limit
        else:
            continue
        for base in bases:
            for d in (base / rel, *(base / p for p in rel.parents)):
                limit = reader(d)
                if limit is not None:
                    limits.append(limit)
    return min(limits) if limits else None


def _v2_limit(d: Path) -> float | None:
    try:
        quota, period = (d / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_limit(d: Path) -> float | None:
    try:
        quota = int((d / "cpu.cfs_quota_us").read_text())
        period = int((d / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def cpu_count() -> int:
    """CPUs this process may use, at least 1: its affinity mask where the OS has one (``taskset``, a container's CPU
    set), capped by its control group's CPU quota rounded up (:func:`cgroup_cpu_limit`; a container started with
    ``--cpus 1.5`` on a 16-core host gets 2)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit()
    if limit is not None:
        n = min(n, math.ceil(limit))
    return max(1, n)


def cpu_name() -> str:
    """The CPU model (``model name`` of ``/proc/cpuinfo``; else ``platform.processor()``, else the architecture), so
    that a timing names the machine it was taken on: the 2-core machines msma is measured on are not all alike."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
