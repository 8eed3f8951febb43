"""Every experiment config composes and runs one training step (tiny sizes; the experiment's own encoder).

Every experiment runs through the documented embedded-default override set (``+preset=embedded``: ICT +
synthetic faces, CPU); the paper experiments also run on small synthetic BFM-format files."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from msma.config import compose_experiment, list_experiments, tiny_overrides
from msma.preflight import EMBEDDED_OVERRIDES
from msma.training.run import run_training

PAPER_EXPERIMENTS = ("msma_lka", "mlanet", "deep3d_r50")


@pytest.fixture(scope="module")
def synthetic_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synthetic-cache")


@pytest.mark.slow
@pytest.mark.parametrize("name", list_experiments())
def test_experiment_runs_one_step(name: str, synthetic_cache: Path, tmp_path: Path) -> None:
    cfg = compose_experiment(name, [*EMBEDDED_OVERRIDES, *tiny_overrides(synthetic_cache)])
    assert cfg.face_model.name == "ict"
    result = run_training(cfg, tmp_path / name)
    assert len(result.train_losses) == 1 and math.isfinite(result.train_losses[0])
    assert (tmp_path / name / "config.yaml").is_file()
    assert Path(result.last_checkpoint).is_file()
    # The authors' networks write 1.2 GB checkpoints (105.7 M parameters + Adam state); pytest keeps the temporary
    # folders of its last three sessions, which filled this machine's disk once.
    shutil.rmtree(tmp_path / name / "checkpoints", ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER_EXPERIMENTS)
def test_paper_experiment_runs_one_step_on_bfm_files(
    name: str, synthetic_bfm_dir: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """The authors' setting with its BFM layout (257 coefficients) on small synthetic BFM-format files."""
    overrides = [f"face_model.path={synthetic_bfm_dir}", "loss.use_identity=false"]
    cfg = compose_experiment(name, overrides + tiny_overrides(tmp_path_factory.mktemp("bfm-synthetic")))
    assert cfg.face_model.name == "bfm" and cfg.trainer.precision == "32-true" and cfg.model.name == name
    assert not cfg.data.color_jitter and not cfg.data.blur and cfg.data.flip
    result = run_training(cfg, tmp_path / name)
    assert len(result.train_losses) == 1 and math.isfinite(result.train_losses[0])
    shutil.rmtree(tmp_path / name / "checkpoints", ignore_errors=True)  # 1.2 GB each (see above)
