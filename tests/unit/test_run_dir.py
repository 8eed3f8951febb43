"""``RunDir``: the paths of a run folder, atomic writes of config.yaml / metrics.json, and reading them back."""

from __future__ import annotations

from pathlib import Path

import pytest

from msma.training.run_dir import RunDir


def test_paths_writes_and_reads(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "runs" / "quickstart" / "20260101-000000")
    assert run.experiment == "quickstart" and run.name == "20260101-000000"
    assert run.read_metrics() is None and run.last_checkpoint is None
    run.create().write_config("name: quickstart\n")
    run.write_metrics({"trained": {"nme": 0.05}})
    assert run.config_path.read_text() == "name: quickstart\n"
    assert run.read_metrics() == {"trained": {"nme": 0.05}}
    assert run.csv_path == run.path / "csv" / "metrics.csv" and run.grids == run.path / "grids"
    run.checkpoints.mkdir()
    (run.checkpoints / "last.ckpt").write_bytes(b"x")
    assert run.last_checkpoint == run.checkpoints / "last.ckpt"
    # Only the two files: the atomic writes leave no temporaries behind.
    assert sorted(p.name for p in run.path.iterdir()) == ["checkpoints", "config.yaml", "metrics.json"]
    run.metrics_path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="metrics.json: expected a JSON object"):
        run.read_metrics()
