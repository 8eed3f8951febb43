"""``msma eval --data synthetic`` defaults to the run's own held-out split; options override it."""

from __future__ import annotations

from msma.data.config import DataConfig
from msma.evaluation.split import synthetic_split_config


def test_defaults_are_the_runs_split() -> None:
    run = DataConfig(kind="synthetic", test_kind="synthetic", image_size=64, batch_size=16, val_samples=128, seed=2)
    got = synthetic_split_config(run)
    assert (got.test_kind, got.image_size, got.batch_size, got.val_samples, got.seed) == ("synthetic", 64, 16, 128, 2)
    assert got.num_workers == 0
    no_test = synthetic_split_config(DataConfig(kind="synthetic", test_kind=None))
    assert no_test.test_kind is None  # its held-out split is its validation split


def test_other_data_gets_a_synthetic_test_split_and_overrides_apply() -> None:
    run = DataConfig(kind="folder", root="/photos", test_kind="aflw2000_3d", test_root="/aflw", seed=1)
    got = synthetic_split_config(run, image_size=32, num_samples=7, seed=4, cache_dir="/c", batch_size=3)
    assert got.test_kind == "synthetic"
    assert (got.image_size, got.val_samples, got.seed, got.synthetic_cache_dir, got.batch_size) == (32, 7, 4, "/c", 3)
