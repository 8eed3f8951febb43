"""``msma.utils.cores``: the CPUs a process may use and the CPU's name (named in every training run's metrics)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from msma.utils import cores


def test_cpu_count_is_the_affinity_mask() -> None:
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert cores.cpu_count() == expected >= 1


def test_cpu_name_reads_the_model_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: X\nmodel name\t: Example CPU 9000 @ 2.0GHz\nflags\t: fpu\n")
    real_path = cores.Path
    monkeypatch.setattr(cores, "Path", lambda p: info if p == "/proc/cpuinfo" else real_path(p))
    assert cores.cpu_name() == "Example CPU 9000 @ 2.0GHz"
    # No /proc/cpuinfo (macOS, Windows): the platform's processor string, else the architecture, never empty.
    monkeypatch.setattr(cores, "Path", lambda p: tmp_path / "missing")
    monkeypatch.setattr(cores.platform, "processor", lambda: "")
    monkeypatch.setattr(cores.platform, "machine", lambda: "arm64")
    assert cores.cpu_name() == "arm64"
