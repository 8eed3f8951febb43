"""The CPUs this process may use."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_count() -> int:
    """CPUs this process may use (its affinity mask where the OS has one, e.g. under ``taskset`` or a container's
    CPU set), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


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
