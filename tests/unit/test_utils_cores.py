"""``msma.utils.cores``: the CPUs a process may use and the CPU's name (named in every training run's metrics)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from msma.utils import cores


def test_cpu_count_is_the_affinity_mask_capped_by_the_quota() -> None:
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    limit = cores.cgroup_cpu_limit()
    if limit is not None:
        expected = min(expected, math.ceil(limit))
    assert cores.cpu_count() == expected >= 1


def _tree(tmp_path: Path, files: dict[str, str], proc: str) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (tmp_path / "proc_cgroup").write_text(proc)
    return tmp_path / "proc_cgroup", root


def test_cgroup_v2_quota_is_read_from_the_group_or_an_ancestor(tmp_path: Path) -> None:
    proc, root = _tree(
        tmp_path, {"job/cpu.max": "150000 100000\n", "job/task/cpu.max": "max 100000\n"}, "0::/job/task\n"
    )
    assert cores.cgroup_cpu_limit(proc, root) == pytest.approx(1.5)  # the ancestor's quota binds
    proc, root = _tree(tmp_path / "b", {"cpu.max": "max 100000\n"}, "0::/\n")
    assert cores.cgroup_cpu_limit(proc, root) is None  # "max": no quota


def test_cgroup_v1_quota_and_no_quota(tmp_path: Path) -> None:
    files = {"cpu,cpuacct/docker/x/cpu.cfs_quota_us": "250000\n", "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n"}
    proc, root = _tree(tmp_path, files, "4:memory:/docker/x\n3:cpu,cpuacct:/docker/x\n")
    assert cores.cgroup_cpu_limit(proc, root) == pytest.approx(2.5)
    unlimited = {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}
    proc, root = _tree(tmp_path / "b", unlimited, "3:cpu,cpuacct:/\n")
    assert cores.cgroup_cpu_limit(proc, root) is None
    # Unreadable or malformed files: no quota rather than an error.
    proc, root = _tree(tmp_path / "c", {"cpu.max": "garbage"}, "0::/\n")
    assert cores.cgroup_cpu_limit(proc, root) is None
    assert cores.cgroup_cpu_limit(tmp_path / "missing", root) is None


def test_cpu_count_rounds_the_quota_up_and_never_exceeds_the_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(cores, "cgroup_cpu_limit", lambda: 1.5)
    assert cores.cpu_count() == 2
    monkeypatch.setattr(cores, "cgroup_cpu_limit", lambda: 0.2)
    assert cores.cpu_count() == 1
    monkeypatch.setattr(cores, "cgroup_cpu_limit", lambda: 64.0)
    assert cores.cpu_count() == 16
    monkeypatch.setattr(cores, "cgroup_cpu_limit", lambda: None)
    assert cores.cpu_count() == 16


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
