"""The held-out evaluator: per-face errors, their accumulation, batch and per-face modes agreeing."""

from __future__ import annotations

import math

import pytest
import torch

from msma.data.batch import FaceBatch, FaceSample, collate_samples
from msma.evaluation.heldout import (
    METRIC_NAMES,
    HeldOutMetrics,
    evaluate,
    evaluate_per_face,
    face_region_mask,
    per_face_errors,
)
from msma.face_model.output import FaceOutput
from msma.face_model.params import CoeffLayout

LAYOUT = CoeffLayout(4, 3, 2)


def _face(vertices: torch.Tensor, landmarks: torch.Tensor) -> FaceOutput:
    b, n = vertices.shape[:2]
    z = torch.zeros(b, n, 3)
    return FaceOutput(vertices, vertices, z, z, z, torch.zeros(b, 68, 3), landmarks, torch.zeros(b, n, 4), 64)


def _batch(vertices: torch.Tensor, landmarks: torch.Tensor, params: list[torch.Tensor | None]) -> FaceBatch:
    return collate_samples(
        [
            FaceSample(
                image=torch.zeros(3, 8, 8),
                landmarks=landmarks[i],
                crop_to_image=torch.eye(3),
                params=params[i],
                vertices=vertices[i],
                yaw=10.0 * i,
            )
            for i in range(vertices.shape[0])
        ]
    )


def test_per_face_errors_and_accumulation() -> None:
    gt_v = torch.randn(3, 100, 3, generator=torch.Generator().manual_seed(3)) * 40
    gt_lm = torch.rand(3, 68, 2, generator=torch.Generator().manual_seed(4)) * 200
    shifts = torch.tensor([1.0, 2.0, 6.0])
    pred_v = gt_v + shifts[:, None, None] * torch.tensor([1.0, 0.0, 0.0])
    pred_lm = gt_lm + shifts[:, None, None] * torch.tensor([0.0, 1.0])
    pred = LAYOUT.zeros(3).replace(trans=torch.stack([torch.zeros(3), torch.zeros(3), shifts], dim=1))
    # The last face has no ground-truth coefficients: its coefficient errors stay out of the means.
    gt_params: list[torch.Tensor | None] = [LAYOUT.join(LAYOUT.zeros(1))[0], LAYOUT.join(LAYOUT.zeros(1))[0], None]
    batch = _batch(gt_v, gt_lm, gt_params)
    errors = per_face_errors(pred, _face(pred_v, pred_lm), batch, None)
    assert set(errors) == set(METRIC_NAMES)
    torch.testing.assert_close(errors["vertex_posed_mm"], shifts.double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(errors["vertex_aligned_mm"], torch.zeros(3, dtype=torch.float64), atol=1e-3, rtol=0)
    box = torch.sqrt((gt_lm.amax(1) - gt_lm.amin(1)).prod(dim=1))
    torch.testing.assert_close(errors["nme"], (shifts / box).double(), rtol=1e-5, atol=1e-7)
    assert errors["trans_mm"][:2].tolist() == pytest.approx([1.0, 2.0]) and math.isnan(float(errors["trans_mm"][2]))

    metric = HeldOutMetrics()
    metric.update(pred[:2], _face(pred_v[:2], pred_lm[:2]), _batch(gt_v[:2], gt_lm[:2], gt_params[:2]))
    metric.update(pred[2:], _face(pred_v[2:], pred_lm[2:]), _batch(gt_v[2:], gt_lm[2:], gt_params[2:]))
    s = metric.summary()
    assert s.count == 3
    assert s["vertex_posed_mm"] == pytest.approx(3.0, rel=1e-5)
    assert s["trans_mm"] == pytest.approx(1.5)  # faces 0 and 1 only
    assert s["id_rmse"] == 0.0
    assert s["nme"] == pytest.approx(float((shifts / box).mean()), rel=1e-5)
    assert float(metric.compute()) == pytest.approx(s["nme"], abs=1e-12)


def test_missing_ground_truth_is_nan() -> None:
    lm = torch.full((1, 68, 2), float("nan"))
    batch = collate_samples([FaceSample(image=torch.zeros(3, 8, 8), landmarks=lm[0], crop_to_image=torch.eye(3))])
    metric = HeldOutMetrics()
    metric.update(LAYOUT.zeros(1), _face(torch.zeros(1, 5, 3), torch.zeros(1, 68, 2)), batch)
    s = metric.summary()
    assert s.count == 1 and all(math.isnan(s[name]) for name in METRIC_NAMES)


def test_batch_and_per_face_modes_agree(ict_model) -> None:  # type: ignore[no-untyped-def]
    from msma.data.synthetic import SyntheticFaceDataset

    ds = SyntheticFaceDataset(ict_model, num_samples=5, seed=11, image_size=32, cache_dir=None)
    batches = [collate_samples([ds[i] for i in range(0, 3)]), collate_samples([ds[i] for i in range(3, 5)])]
    summary = evaluate(None, ict_model, batches)
    rows = evaluate_per_face(None, ict_model, batches)
    assert summary.count == len(rows) == 5
    for name in ("nme", "vertex_posed_mm", "vertex_aligned_mm", "yaw_deg", "id_rmse"):
        per_face_mean = sum(float(r[name]) for r in rows) / len(rows)
        assert summary[name] == pytest.approx(per_face_mean, rel=1e-9), name
    # The mask covers exactly the vertices of the rendered triangles.
    mask = face_region_mask(ict_model)
    assert int(mask.sum()) == int(ict_model.tri.unique().numel())


def test_stand_ins_are_left_out_of_evaluations(ict_model) -> None:  # type: ignore[no-untyped-def]
    """A row that stands in for an item that could not be loaded (RobustDataset keeps training batches full) is
    not scored: the summary equals the summary of the genuine rows alone."""
    import dataclasses

    from msma.data.synthetic import SyntheticFaceDataset

    ds = SyntheticFaceDataset(ict_model, num_samples=4, seed=11, image_size=32, cache_dir=None)
    genuine = [ds[i] for i in range(4)]
    stand_in = dataclasses.replace(genuine[3], replaces="photos/broken.jpg: truncated")
    mixed = collate_samples([genuine[0], stand_in, genuine[1]])
    assert mixed.replaced is not None and mixed.replaced.tolist() == [False, True, False] and mixed.num_replaced == 1
    kept = mixed.genuine()
    assert kept is not None and kept.batch_size == 2 and kept.replaced is None and kept.num_replaced == 0
    assert torch.equal(kept.image, torch.stack([genuine[0].image, genuine[1].image]))
    only_stand_ins = collate_samples([stand_in, stand_in])
    assert only_stand_ins.genuine() is None
    clean = collate_samples(genuine[:2])
    assert clean.replaced is None and clean.genuine() is clean

    summary = evaluate(None, ict_model, [mixed, only_stand_ins, collate_samples([genuine[2]])])
    reference = evaluate(None, ict_model, [collate_samples(genuine[:3])])
    assert summary.count == reference.count == 3
    for name in METRIC_NAMES:
        assert summary[name] == pytest.approx(reference[name], rel=1e-9, nan_ok=True), name
    rows = evaluate_per_face(None, ict_model, [mixed, only_stand_ins])
    assert len(rows) == 2 and [r["source"] for r in rows] == [genuine[0].source, genuine[1].source]
