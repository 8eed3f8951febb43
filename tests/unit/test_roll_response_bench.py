"""benchmarks/roll_response.py: a crop turned by theta shows the face as the face model draws it with its roll
changed by +theta (so the ideal roll gain is +1), and the gain is the stated slope."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def bench(load_benchmark: Callable[[str], Any]) -> Any:
    return load_benchmark("roll_response")


def test_turned_crop_is_the_face_with_its_roll_changed(bench: Any, ict_model) -> None:  # type: ignore[no-untyped-def]
    from msma.data.align import apply_affine, warp_crop

    size, theta = 80, 15.0
    base = ict_model.layout.zeros(1)
    lm0 = ict_model(base, image_size=size).landmarks_2d[0].double().numpy()
    turned = base.replace(angles=torch.tensor([[0.0, 0.0, math.radians(theta)]]))
    lm_roll = ict_model(turned, image_size=size).landmarks_2d[0].double().numpy()
    m = bench.turn(theta, size)
    # turned-crop pixel u shows crop pixel m u: a crop landmark l appears at m^-1 l
    assert np.abs(apply_affine(np.linalg.inv(m), lm0) - lm_roll).max() < 0.05
    # and warp_crop with that transform samples the crop there
    crop = np.zeros((size, size, 3), np.float32)
    crop[30:34, 50:54] = 1.0  # centre (51.5, 31.5)
    out = warp_crop(crop, m, size)
    yy, xx = np.mgrid[:size, :size]
    w = out[..., 0].astype(np.float64)
    centre = np.array([(w * xx).sum(), (w * yy).sum()]) / w.sum()
    assert np.abs(apply_affine(np.linalg.inv(m), np.array([[51.5, 31.5]]))[0] - centre).max() < 0.1


def test_roll_gain_is_the_slope_through_the_origin(bench: Any) -> None:
    angles = [-20.0, -10.0, 0.0, 10.0, 20.0]
    assert bench.roll_gain(angles, [3.0 + a for a in angles]) == pytest.approx(1.0)
    assert bench.roll_gain(angles, [3.0] * 5) == pytest.approx(0.0)
    assert bench.roll_gain(angles, [1.0 + 0.25 * a for a in angles]) == pytest.approx(0.25)
