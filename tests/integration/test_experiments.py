"""Every experiment config composes and runs one training step (tiny sizes; the experiment's own encoder)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from msma.config import compose_experiment, list_experiments, tiny_overrides
from msma.training.run import run_training


@pytest.fixture(scope="module")
def synthetic_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synthetic-cache")


@pytest.mark.slow
@pytest.mark.parametrize("name", list_experiments())
def test_experiment_runs_one_step(name: str, synthetic_cache: Path, tmp_path: Path) -> None:
    cfg = compose_experiment(name, tiny_overrides(synthetic_cache))
    result = run_training(cfg, tmp_path / name)
    assert len(result.train_losses) == 1 and math.isfinite(result.train_losses[0])
    assert (tmp_path / name / "config.yaml").is_file()
    assert Path(result.last_checkpoint).is_file()
