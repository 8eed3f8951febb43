"""benchmarks/error_budget.py: each variant puts exactly the named ground-truth coefficients in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from msma.face_model.params import GROUPS, CoeffLayout, FaceParams


@pytest.fixture(scope="module")
def bench(load_benchmark: Callable[[str], Any]) -> Any:
    return load_benchmark("error_budget")


def _random(layout: CoeffLayout, seed: int) -> FaceParams:
    return layout.split(torch.randn(3, layout.total, generator=torch.Generator().manual_seed(seed)))


# variant -> {group: columns taken from the ground truth (None: all)}
EXPECTED: dict[str, dict[str, list[int] | None]] = {
    "network": {},
    "ground-truth angles": {"angles": None},
    "ground-truth yaw only": {"angles": [1]},
    "ground-truth translation x, y": {"trans": [0, 1]},
    "ground-truth translation z": {"trans": [2]},
    "ground-truth pose (angles + translation)": {"angles": None, "trans": None},
    "ground-truth identity": {"id": None},
    "ground-truth expression": {"exp": None},
    "ground-truth shape (identity + expression)": {"id": None, "exp": None},
}


@pytest.mark.parametrize("variant", list(EXPECTED))
def test_each_variant_substitutes_exactly_its_ground_truth(bench: Any, variant: str) -> None:
    layout = CoeffLayout(6, 5, 4)
    p, f, a, g, z = (_random(layout, s) for s in range(5))
    preds = {"plain": p, "pose": f, "all": a}
    got = bench.VARIANTS[variant](preds, g, z)
    for group in GROUPS:
        want = getattr(p, group).clone()
        cols = EXPECTED[variant].get(group, [])
        if cols is None:
            want = getattr(g, group).clone()
        elif cols:
            want[:, cols] = getattr(g, group)[:, cols]
        torch.testing.assert_close(getattr(got, group), want, rtol=0, atol=0, msg=f"{variant}: {group}")
    assert bench.VARIANTS["network, flip-averaged pose"](preds, g, z) is f
    assert bench.VARIANTS["network, flip-averaged (every group)"](preds, g, z) is a
    assert bench.VARIANTS["mean face (untrained)"](preds, g, z) is z
    assert set(bench.VARIANTS) == {
        *EXPECTED,
        "network, flip-averaged pose",
        "network, flip-averaged (every group)",
        "mean face (untrained)",
    }
