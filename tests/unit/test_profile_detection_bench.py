"""benchmarks/profile_detection.py: the frame a synthetic crop is placed in keeps its landmarks on the same pixels,
and the inner-51 NME is the stated quantity."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark: Callable[[str], Any]) -> Any:
    return load_benchmark("profile_detection")


def test_frame_keeps_landmarks_on_their_pixels(bench: Any) -> None:
    crop = np.zeros((224, 224, 3), np.uint8)
    crop[100:104, 60:64] = 255  # a 4 px square whose centre is pixel-index (61.5, 101.5)
    lm = np.tile(np.array([[61.5, 101.5]]), (68, 1))
    frame, mapped = bench.frame_of(crop, lm)
    assert frame.shape == (bench.FRAME, bench.FRAME, 3)
    weight = frame[..., 0].astype(np.float64)
    yy, xx = np.mgrid[: frame.shape[0], : frame.shape[1]]
    centre = np.array([(weight * xx).sum(), (weight * yy).sum()]) / weight.sum()  # intensity centroid
    assert np.abs(mapped[0] - centre).max() < 0.1  # same place (a half-pixel convention error would be 0.2)
    assert np.allclose(frame[0, 0], 0) and np.allclose(mapped, mapped[0])  # padding repeats the (black) edge


def test_inner_nme_ignores_the_jaw_and_divides_by_the_box(bench: Any) -> None:
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 100, (68, 2))
    w, h = gt.max(0) - gt.min(0)
    pred = gt.copy()
    pred[:17] += 50.0  # the jaw is not scored
    assert bench.inner_nme(pred, gt) == pytest.approx(0.0)
    pred[17:, 0] += 3.0
    assert bench.inner_nme(pred, gt) == pytest.approx(3.0 / np.sqrt(w * h) * 100.0)
