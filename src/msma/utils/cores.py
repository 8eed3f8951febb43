"""The CPUs this process may use."""

from __future__ import annotations

import os


def cpu_count() -> int:
    """CPUs this process may use (its affinity mask where the OS has one, e.g. under ``taskset`` or a container's
    CPU set), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
