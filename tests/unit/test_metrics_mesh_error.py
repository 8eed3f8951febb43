"""Mesh error against scans: exact point-to-surface distances, alignment, MICC RMSE and NoW statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from msma.metrics.mesh_error import (
    MeshError,
    SurfaceQuery,
    closest_points_on_triangles,
    crop_mesh,
    fit_similarity,
    scan_error,
)


def _height(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A face-like height field in mm: a spherical cap (R = 120 mm) plus a nose ridge."""
    cap = np.sqrt(np.maximum(120.0**2 - x**2 - y**2, 0.0)) - 120.0
    nose = 15.0 * np.exp(-(x**2 / (2 * 9.0**2) + (y + 5.0) ** 2 / (2 * 16.0**2)))
    return cap + nose


def _normals(x: np.ndarray, y: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    dzdx = (_height(x + eps, y) - _height(x - eps, y)) / (2 * eps)
    dzdy = (_height(x, y + eps) - _height(x, y - eps)) / (2 * eps)
    n = np.stack([-dzdx, -dzdy, np.ones_like(x)], axis=-1)
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def _grid_mesh(step: float, half: float = 90.0, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    ticks = np.arange(-half + offset, half + 1e-9, step)
    n = ticks.size
    xx, yy = np.meshgrid(ticks, ticks)
    verts = np.stack([xx.ravel(), yy.ravel(), _height(xx.ravel(), yy.ravel())], axis=1)
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    faces = np.concatenate([np.stack([a, b, d], 1), np.stack([a, d, c], 1)])
    return verts, faces


#: 7 landmarks (NoW order) on the height field: eye corners, nose tip, mouth corners (mm).
_LM_XY = np.array(
    [[-45.0, 35.0], [-15.0, 35.0], [15.0, 35.0], [45.0, 35.0], [0.0, -5.0], [-25.0, -40.0], [25.0, -40.0]]
)


def _landmarks() -> np.ndarray:
    return np.concatenate([_LM_XY, _height(_LM_XY[:, 0], _LM_XY[:, 1])[:, None]], axis=1)


def _random_rigid(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rot = Rotation.random(random_state=seed).as_matrix()
    trans = np.random.default_rng(seed).uniform(-300, 300, size=3)
    return rot, trans


def test_closest_point_matches_dense_sampling() -> None:
    rng = np.random.default_rng(0)
    tri = rng.normal(size=(50, 3, 3)) * 10.0
    pts = rng.normal(size=(50, 3)) * 15.0
    cp = closest_points_on_triangles(pts, tri[:, 0], tri[:, 1], tri[:, 2])
    got = np.linalg.norm(cp - pts, axis=1)
    # Dense barycentric sampling gives an upper bound that approaches the true distance.
    u, v = np.meshgrid(np.linspace(0, 1, 201), np.linspace(0, 1, 201))
    keep = (u + v) <= 1.0
    bary = np.stack([1 - u[keep] - v[keep], u[keep], v[keep]], axis=1)
    samples = np.einsum("sk,tkd->tsd", bary, tri)
    brute = np.linalg.norm(samples - pts[:, None], axis=-1).min(axis=1)
    assert np.all(got <= brute + 1e-9)
    np.testing.assert_allclose(got, brute, atol=0.15)
    # The closest points lie in their triangles' planes.
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    np.testing.assert_allclose(np.einsum("td,td->t", cp - tri[:, 0], normal), 0.0, atol=1e-8)


def test_surface_query_is_exact_against_brute_force() -> None:
    verts, faces = _grid_mesh(step=6.0)
    rng = np.random.default_rng(1)
    pts = rng.uniform(-120, 120, size=(300, 3))
    dist, closest, face = SurfaceQuery(verts, faces).query(pts, chunk=64)
    tri = verts[faces]
    cp = closest_points_on_triangles(pts[:, None], tri[None, :, 0], tri[None, :, 1], tri[None, :, 2])
    brute = np.linalg.norm(cp - pts[:, None], axis=-1).min(axis=1)
    np.testing.assert_allclose(dist, brute, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(closest - pts, axis=1), dist, atol=1e-9)
    assert face.min() >= 0 and face.max() < faces.shape[0]


def test_fit_similarity_recovers_transform() -> None:
    rot, trans = _random_rigid(3)
    src = np.random.default_rng(3).normal(size=(20, 3)) * 30
    t = fit_similarity(src, 1.3 * src @ rot.T + trans, with_scale=True)
    np.testing.assert_allclose(t.rotation, rot, atol=1e-10)
    np.testing.assert_allclose(t.translation, trans, atol=1e-8)
    assert t.scale == pytest.approx(1.3)
    np.testing.assert_allclose(t.inverse().apply(t.apply(src)), src, atol=1e-9)
    assert np.linalg.det(fit_similarity(src, src[:, ::-1].copy()).rotation) == pytest.approx(1.0)


def test_crop_mesh_keeps_sphere() -> None:
    verts, faces = _grid_mesh(step=10.0)
    cv, cf = crop_mesh(verts, faces, np.zeros(3), 50.0)
    assert cf is not None and cf.max() < cv.shape[0]
    assert np.linalg.norm(cv, axis=1).max() <= 50.0
    assert cv.shape[0] == int((np.linalg.norm(verts, axis=1) <= 50.0).sum())
    with pytest.raises(ValueError, match="no vertex"):
        crop_mesh(verts, faces, np.full(3, 1e4), 1.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_scan_equal_to_prediction_under_rigid_transform_has_zero_error(seed: int) -> None:
    pred_v, pred_f = _grid_mesh(step=3.0)
    rot, trans = _random_rigid(seed)
    scan_v = pred_v @ rot.T + trans
    lm = _landmarks()
    noisy_lm = lm + np.random.default_rng(seed).normal(scale=2.0, size=lm.shape)  # imprecise landmark picks
    res = scan_error(pred_v, pred_f, noisy_lm, scan_v, pred_f, lm @ rot.T + trans)
    assert res.landmark_rmse > 1.0  # the landmark fit alone is off ...
    assert res.rmse < 1e-3  # ... ICP removes it
    assert res.mean < 1e-3 and res.median < 1e-3
    np.testing.assert_allclose(res.transform.rotation, rot, atol=1e-5)
    # Only the 95 mm crop around the nose tip is measured.
    tip = lm[4] @ rot.T + trans
    assert res.scan_to_mesh.shape[0] == int((np.linalg.norm(scan_v - tip, axis=1) <= 95.0).sum())


def test_similarity_alignment_absorbs_scale() -> None:
    pred_v, pred_f = _grid_mesh(step=4.0)
    rot, trans = _random_rigid(5)
    scan_v = 1.08 * pred_v @ rot.T + trans
    lm = _landmarks()
    rigid = scan_error(pred_v, pred_f, lm, scan_v, pred_f, 1.08 * lm @ rot.T + trans, with_scale=False)
    sim = scan_error(pred_v, pred_f, lm, scan_v, pred_f, 1.08 * lm @ rot.T + trans, with_scale=True)
    assert sim.rmse < 1e-3 and sim.transform.scale == pytest.approx(1.08, abs=1e-5)
    assert rigid.rmse > 0.5


@pytest.mark.slow
def test_noisy_scan_error_matches_injected_noise() -> None:
    sigma = 1.0
    pred_v, pred_f = _grid_mesh(step=3.0)
    # The scan samples the same surface on another grid, with Gaussian noise along the normal, far junk
    # (outside the 95 mm crop) and a random rigid pose.
    scan_v, scan_f = _grid_mesh(step=2.6, half=110.0, offset=0.35)
    rng = np.random.default_rng(7)
    scan_v = scan_v + _normals(scan_v[:, 0], scan_v[:, 1]) * rng.normal(scale=sigma, size=(scan_v.shape[0], 1))
    rot, trans = _random_rigid(7)
    scan_v = scan_v @ rot.T + trans
    lm = _landmarks()
    res = scan_error(pred_v, pred_f, lm, scan_v, scan_f, lm @ rot.T + trans)
    s2m_rmse = math.sqrt(float(np.mean(res.scan_to_mesh**2)))
    assert s2m_rmse == pytest.approx(sigma, rel=0.08)
    assert res.mean == pytest.approx(sigma * math.sqrt(2 / math.pi), rel=0.08)
    assert res.median == pytest.approx(sigma * 0.6745, rel=0.1)
    assert res.std == pytest.approx(sigma * math.sqrt(1 - 2 / math.pi), rel=0.1)
    # Predicted vertices to the noisy scan surface: smaller than sigma (the noisy surface averages), not zero.
    assert 0.2 * sigma < math.sqrt(float(np.mean(res.mesh_to_scan**2))) < sigma
    assert 0.5 * sigma < res.rmse < sigma
    # ICP recovers the pose despite the noise: the landmarks land within 2.5 mm of their true positions (the
    # spherical cap leaves rotations about its centre weakly constrained, only the nose ridge pins them).
    moved = res.transform.apply(lm)
    assert np.linalg.norm(moved - (lm @ rot.T + trans), axis=1).max() < 2.5

    metric = MeshError()
    metric.update(res)
    metric.update(scan_error(pred_v, pred_f, lm, pred_v, pred_f, lm))
    summary = metric.summary()
    assert summary.count == 2
    assert summary.rmse_mean == pytest.approx(res.rmse / 2, rel=1e-3)
    assert float(metric.compute()) == pytest.approx(summary.rmse_mean)
    pooled = np.concatenate([res.scan_to_mesh, np.zeros(0)])
    assert summary.mean < float(pooled.mean())  # the exact second scan pools zero distances in


def test_bad_inputs_are_reported() -> None:
    verts, faces = _grid_mesh(step=10.0)
    with pytest.raises(ValueError, match="scan_vertices"):
        scan_error(verts, faces, _landmarks(), np.zeros((5, 2)), None, _landmarks())
    with pytest.raises(ValueError, match="pred_faces"):
        scan_error(verts, faces + 10_000, _landmarks(), verts, None, _landmarks())
    with pytest.raises(ValueError, match="nose_tip"):
        scan_error(verts, faces, _landmarks()[:5], verts, None, _landmarks()[:5])
    with pytest.raises(ValueError, match="non-finite"):
        SurfaceQuery(np.full((3, 3), np.nan), np.array([[0, 1, 2]]))
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert torch.isnan(MeshError().compute())
