"""The head roll of the synthetic training faces (``data.roll_std_deg`` / ``data.max_roll_deg``)."""

from __future__ import annotations

import math

import pytest
import torch

from msma.data.datamodule import FaceDataModule
from msma.data.synthetic import SamplingSettings
from msma.data.synthetic.sampling import sample_pose


@pytest.mark.parametrize(("std", "limit"), [(6.0, 20.0), (15.0, 45.0)])
def test_sampled_roll_follows_the_settings(std: float, limit: float) -> None:
    """A truncated normal: its sample std matches the truncated normal's own, and no draw is beyond the limit."""
    gen = torch.Generator().manual_seed(3)
    roll = torch.rad2deg(sample_pose(gen, 20000, SamplingSettings(roll_std_deg=std, max_roll_deg=limit))[:, 2])
    assert float(roll.abs().max()) <= limit + 1e-9
    # std of N(0, s) truncated at +-a: s * sqrt(1 - 2 a phi(a) / (2 Phi(a) - 1)), a = limit / s
    a = limit / std
    phi = math.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
    big_phi = 0.5 * (1 + math.erf(a / math.sqrt(2)))
    expected = std * math.sqrt(1 - 2 * a * phi / (2 * big_phi - 1))
    assert float(roll.std()) == pytest.approx(expected, rel=0.03)
    assert abs(float(roll.mean())) < 0.05 * std


def test_datamodule_gives_roll_to_the_training_split_only(ict_model) -> None:  # type: ignore[no-untyped-def]
    dm = FaceDataModule(
        face_model=ict_model,
        kind="synthetic",
        image_size=32,
        num_samples=8,
        val_samples=4,
        synthetic_cache_dir=None,
        num_workers=0,
        roll_std_deg=15.0,
        max_roll_deg=45.0,
    )
    train = dm._synthetic_dataset(8, 0, train=True)
    val = dm._synthetic_dataset(4, 1, train=False)
    assert (train.settings.roll_std_deg, train.settings.max_roll_deg) == (15.0, 45.0)
    assert (val.settings.roll_std_deg, val.settings.max_roll_deg) == (6.0, 20.0)
    assert train.cache_key() != dm._synthetic_dataset(8, 0, train=False).cache_key()  # its own training cache
    with pytest.raises(ValueError, match="data.roll_std_deg"):
        FaceDataModule(face_model=ict_model, kind="synthetic", max_roll_deg=120.0)
    with pytest.raises(ValueError, match="data.roll_std_deg"):
        FaceDataModule(face_model=ict_model, kind="synthetic", roll_std_deg=-1.0)
