"""Every experiment config composes and runs one training step (tiny sizes; the experiment's own encoder)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from msma.config import compose_experiment, list_experiments
from msma.train import run_training


def tiny_overrides(cache: Path) -> list[str]:
    """Shrinks any experiment to a one-step CPU run on a 2-sample synthetic set."""
    return [
        "trainer=cpu",
        "renderer=torch",
        "logger=csv",
        "num_threads=1",
        "model.pretrained=false",
        "data=synthetic",
        "data.image_size=48",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.pin_memory=false",
        "data.num_samples=2",
        "data.val_samples=2",
        "data.augment=false",
        f"data.synthetic_cache_dir={cache}",
        "trainer.max_steps=1",
        "trainer.max_epochs=1",
        "trainer.limit_val_batches=1",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false",
        "trainer.grid_every_n=0",
        "final_eval=false",
    ]


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
