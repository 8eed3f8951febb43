"""Synthetic-ground-truth metrics: alignment, per-vertex error, coefficient errors."""

from __future__ import annotations

import pytest
import torch

from msma.face_model.params import CoeffLayout
from msma.metrics.synthetic import (
    align_vertices,
    coefficient_errors,
    per_vertex_error,
)


def _rotation(seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.linalg.det(q))


def test_rigid_alignment_removes_pose_but_not_shape() -> None:
    gen = torch.Generator().manual_seed(0)
    gt = torch.randn(2, 500, 3, generator=gen, dtype=torch.float64) * 50
    rot = torch.stack([_rotation(1), _rotation(2)])
    trans = torch.tensor([[10.0, -20.0, 30.0], [0.0, 5.0, -7.0]], dtype=torch.float64)
    posed = gt @ rot.transpose(1, 2) + trans[:, None]
    torch.testing.assert_close(align_vertices(posed, gt), gt)
    torch.testing.assert_close(per_vertex_error(posed, gt), torch.zeros(2, dtype=torch.float64), atol=1e-9, rtol=0)
    assert torch.all(per_vertex_error(posed, gt, "none") > 10)
    # A scale difference survives rigid alignment, vanishes with similarity alignment.
    assert torch.all(per_vertex_error(1.1 * posed, gt, "rigid") > 1)
    torch.testing.assert_close(per_vertex_error(1.1 * posed, gt, "similarity"), torch.zeros(2, dtype=torch.float64))
    # A known per-vertex offset: displacement of exactly 2 mm along a zero-mean pattern.
    offset = torch.zeros_like(gt)
    offset[:, ::2, 0] = 2.0
    offset[:, 1::2, 0] = -2.0
    torch.testing.assert_close(per_vertex_error(gt + offset, gt, "none"), torch.full((2,), 2.0, dtype=torch.float64))
    mask = torch.zeros(500)
    mask[:10] = 1
    torch.testing.assert_close(
        per_vertex_error(gt + offset, gt, "none", mask=mask), torch.full((2,), 2.0, dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="align"):
        per_vertex_error(gt, gt, "affine")  # type: ignore[arg-type]


def test_coefficient_errors_known_values() -> None:
    layout = CoeffLayout(4, 3, 2)
    gt = layout.zeros(1)
    pred = gt.replace(
        id=torch.tensor([[1.0, -1.0, 1.0, -1.0]]),
        angles=torch.deg2rad(torch.tensor([[10.0, -20.0, 359.0]])),
        trans=torch.tensor([[3.0, 4.0, 0.0]]),
    )
    err = coefficient_errors(pred, gt)
    assert float(err.id) == pytest.approx(1.0)
    assert float(err.exp) == 0.0
    assert float(err.yaw_deg) == pytest.approx(20.0, abs=1e-4)
    assert float(err.angles_deg) == pytest.approx((10 + 20 + 1) / 3, abs=1e-4)  # 359 deg wraps to -1
    assert float(err.trans_mm) == pytest.approx(5.0)
