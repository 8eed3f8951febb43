"""AFLW2000-3D NME: hand-computed values on the shared samples, yaw bins, balanced mean, frames."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from msma.metrics.nme import (
    AFLW2000NME,
    landmark_box_size,
    nme,
    nme_3d,
    transform_points,
    yaw_bin,
)


def _load_aflw(testdata: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(2, 68, 3) pt3d_68 and (2,) yaw in degrees of the two shared samples."""
    pts, yaws = [], []
    for name in ("image00050", "image00251"):
        mat = scipy.io.loadmat(str(testdata / "aflw2000_3d" / f"{name}.mat"))
        pts.append(torch.from_numpy(mat["pt3d_68"].T.astype(np.float64)))
        yaws.append(math.degrees(float(mat["Pose_Para"][0, 1])))
    return torch.stack(pts), torch.tensor(yaws, dtype=torch.float64)


def test_nme_hand_computed_on_aflw_samples(testdata: Path) -> None:
    gt, _ = _load_aflw(testdata)
    gt2 = gt[..., :2]
    # Known perturbation: every point moved by (3, 4) px (distance 5) and landmark 30 by a further (0, 12).
    pred = gt2 + torch.tensor([3.0, 4.0], dtype=torch.float64)
    pred[:, 30, 1] += 12.0  # point 30 now at (3, 16) -> distance sqrt(9 + 256)
    expected = []
    for b in range(2):
        x, y = gt2[b, :, 0].numpy(), gt2[b, :, 1].numpy()
        box = math.sqrt((x.max() - x.min()) * (y.max() - y.min()))
        mean_dist = (67 * 5.0 + math.sqrt(9.0 + 256.0)) / 68
        expected.append(mean_dist / box)
    got = nme(pred, gt2)
    assert got.shape == (2,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    # Box sizes are plausible face sizes on these 450x450 images (pixels).
    sizes = landmark_box_size(gt2)
    assert torch.all((sizes > 60) & (sizes < 300))
    # Extra (z) columns are ignored by the 2D NME; zero error at the ground truth.
    np.testing.assert_allclose(nme(gt, gt).numpy(), 0.0)


def test_nme_3d_centres_depth(testdata: Path) -> None:
    gt, _ = _load_aflw(testdata)
    pred = gt.clone()
    pred[..., 2] += 40.0  # a pure depth offset is not an error
    np.testing.assert_allclose(nme_3d(pred, gt).numpy(), 0.0, atol=1e-12)
    pred[:, :, 2] += torch.where(torch.arange(68) % 2 == 0, 2.0, -2.0).double()  # +-2 px in depth, zero-mean
    box = landmark_box_size(gt)
    np.testing.assert_allclose(nme_3d(pred, gt).numpy(), (2.0 / box).numpy(), rtol=1e-10)


def test_yaw_bin_edges() -> None:
    yaw = torch.tensor([0.0, 30.0, -30.0001, 60.0, -60.5, 89.0, float("nan")])
    assert yaw_bin(yaw).tolist() == [0, 0, 1, 1, 2, 2, -1]
    assert int(yaw_bin(-45.0)) == 1


def test_metric_bins_and_balanced_mean(testdata: Path) -> None:
    gt, yaw = _load_aflw(testdata)
    gt2 = gt[..., :2].float()
    assert yaw_bin(yaw).tolist() == [0, 1]  # 0.9 deg and -54.7 deg (shared README)
    metric = AFLW2000NME()
    # Six images: errors chosen per image by scaling a unit offset; yaws cover all bins.
    rng = torch.Generator().manual_seed(0)
    gts = gt2[torch.tensor([0, 1, 0, 1, 0, 1])]
    yaws = torch.tensor([5.0, -20.0, 45.0, 70.0, -80.0, 61.0])
    offsets = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    direction = torch.nn.functional.normalize(torch.randn(6, 68, 2, generator=rng), dim=-1)
    preds = gts + direction * offsets[:, None, None]
    per_image = (offsets / landmark_box_size(gts)).double() * 100
    metric.update(preds[:4], gts[:4], yaws[:4])
    metric.update(preds[4:], gts[4:], yaws[4:])
    res = metric.summary()
    expected_bins = [per_image[[0, 1]].mean(), per_image[[2]].mean(), per_image[[3, 4, 5]].mean()]
    np.testing.assert_allclose(res.bins, [float(v) for v in expected_bins], rtol=1e-5)
    assert res.counts == (2, 1, 3)
    assert res.count == 6
    np.testing.assert_allclose(res.balanced, float(sum(expected_bins) / 3), rtol=1e-5)
    np.testing.assert_allclose(res.mean, float(per_image.mean()), rtol=1e-5)
    assert math.isnan(res.mean_3d)
    # The balanced mean differs from the plain mean when the bins are unequal.
    assert abs(res.balanced - res.mean) > 1e-3
    np.testing.assert_allclose(float(metric.compute()), res.balanced, rtol=1e-12)
    d = res.as_dict()
    assert d["bin_names"] == ["0-30", "30-60", "60-90"] and d["counts"] == (2, 1, 3)


def test_metric_3d_and_reset(testdata: Path) -> None:
    gt, yaw = _load_aflw(testdata)
    metric = AFLW2000NME()
    pred3 = gt.clone()
    pred3[..., 0] += 3.0
    metric.update(pred3[..., :2].float(), gt.float(), yaw, pred_3d=pred3.float(), gt_3d=gt.float())
    res = metric.summary()
    expected = (3.0 / landmark_box_size(gt) * 100).tolist()
    np.testing.assert_allclose(res.bins_3d[:2], expected, rtol=1e-5)
    assert math.isnan(res.bins_3d[2]) and math.isnan(res.balanced)
    np.testing.assert_allclose(res.mean_3d, float(np.mean(expected)), rtol=1e-5)
    metric.reset()
    assert metric.summary().count == 0
    with pytest.raises(ValueError, match="gt_3d"):
        metric.update(pred3[..., :2], gt, yaw, pred_3d=pred3)


def test_transform_points_maps_crop_to_image() -> None:
    # crop -> image: scale 2, rotation 90 deg, translation (10, 20).
    a = torch.tensor([[[0.0, -2.0, 10.0], [2.0, 0.0, 20.0], [0.0, 0.0, 1.0]]])
    pts = torch.tensor([[[1.0, 0.0, 5.0], [0.0, 1.0, -1.0]]])
    out = transform_points(pts, a)
    np.testing.assert_allclose(out[0].numpy(), [[10.0, 22.0, 10.0], [8.0, 20.0, -2.0]], atol=1e-6)
    assert transform_points(pts[..., :2], a[:, :2]).shape == (1, 2, 2)
    with pytest.raises(ValueError, match="affine"):
        transform_points(pts, torch.eye(3))


def test_metric_states_merge_like_ddp(testdata: Path) -> None:
    """Summed states: two 'ranks' merged give the single-process result."""
    gt, yaw = _load_aflw(testdata)
    gt2 = gt[..., :2].float()
    pred = gt2 + 2.0
    whole, rank0, rank1 = AFLW2000NME(), AFLW2000NME(), AFLW2000NME()
    whole.update(pred, gt2, yaw)
    rank0.update(pred[:1], gt2[:1], yaw[:1])
    rank1.update(pred[1:], gt2[1:], yaw[1:])
    rank0.merge_state(rank1)
    a, b = rank0.summary(), whole.summary()
    assert a.counts == b.counts == (1, 1, 0)
    np.testing.assert_allclose([a.mean, a.balanced, *a.bins], [b.mean, b.balanced, *b.bins], rtol=1e-12)
