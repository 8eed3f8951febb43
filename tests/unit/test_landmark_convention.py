"""The jaw sides and brows of the ICT model's 68 landmarks (msma.face_model.landmark_convention)."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from msma.face_model.ict import kept_vertex_indices, parse_readme_landmarks
from msma.face_model.landmark_convention import (
    BROW_FRONT_NZ,
    BROW_RADIUS_MM,
    BROWS,
    CANDIDATE_RADIUS_MM,
    JAW_SIDES,
    MEAN_LANDMARKS_2D,
    OUTLINE_NZ,
    _project,
    _rot_x,
    _to_reference,
    mirror_vertices,
    photo_pitch,
    reselect_brows,
    reselect_jaw,
)
from msma.face_model.model import FaceModel
from msma.utils.geometry import umeyama


def _readme_idx() -> np.ndarray:
    from tests.unit.test_ict import mirror_zip

    with zipfile.ZipFile(mirror_zip()) as zf:
        name = next(n for n in zf.namelist() if n.endswith("README.md") and n.count("/") == 1)
        readme = zf.read(name).decode("utf-8", "replace")
    up = parse_readme_landmarks(readme)
    remap = np.full(int(kept_vertex_indices().max()) + 1, -1)
    remap[kept_vertex_indices()] = np.arange(len(kept_vertex_indices()))
    return remap[up]


def test_umeyama_recovers_a_2d_and_a_3d_similarity() -> None:
    rng = np.random.default_rng(0)
    for dim in (2, 3):
        src = rng.normal(size=(30, dim))
        q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
        if np.linalg.det(q) < 0:
            q[:, 0] *= -1
        dst = 1.7 * src @ q.T + np.arange(dim)
        s, rot, t = umeyama(src, dst)
        assert s == pytest.approx(1.7, rel=1e-9)
        np.testing.assert_allclose(rot, q, atol=1e-9)
        np.testing.assert_allclose(t, np.arange(dim), atol=1e-9)
    with pytest.raises(ValueError, match="one shape"):
        umeyama(np.zeros((4, 2)), np.zeros((4, 3)))


def test_photo_pitch_recovers_a_known_pitch() -> None:
    """An oracle: 3D points whose pitched projection *is* the reference layout are found at that pitch."""
    rng = np.random.default_rng(1)
    depth = rng.uniform(-30.0, 30.0, size=68)  # any depths: the layout is exact only at the right pitch
    img = MEAN_LANDMARKS_2D * 150.0
    at_pose = np.stack([img[:, 0], -img[:, 1], depth], axis=1)  # model frame at the pitched pose (y up)
    for true in (-8.0, 0.0, 12.5, 21.0):
        pts = at_pose @ _rot_x(true)  # undo the pitch: R^T applied to row vectors
        pitch, res = photo_pitch(pts, np.arange(68))
        assert pitch == pytest.approx(true, abs=0.01)
        assert res < 1e-9
        np.testing.assert_allclose(_project(pts, pitch), np.stack([img[:, 0], img[:, 1]], 1) * [1, 1], atol=1e-9)


def _narrow(n: int) -> np.ndarray:
    narrow = np.zeros(n, dtype=bool)
    narrow[:6706] = True  # kept vertices start with the face area in upstream order
    return narrow


def test_ict_brows_reselected_onto_the_reference(ict_model: FaceModel) -> None:
    """The README's brows sit above the reference brows once the face is posed and mapped by its nose, eyes and
    mouth; the re-selected ones meet them, stay mirror pairs, face the camera and lie near the README's."""
    readme = _readme_idx()
    mean = ict_model.mean_shape.double().numpy()
    sel = reselect_brows(mean, ict_model.mesh_tri.numpy(), _narrow(len(mean)), readme)
    brows = list(BROWS)
    assert np.array_equal(sel.landmark_idx[brows], ict_model.landmark_idx.numpy()[brows])  # the conversion's step
    assert not np.array_equal(sel.landmark_idx[brows], readme[brows])
    others = [i for i in range(68) if i not in brows]
    assert np.array_equal(sel.landmark_idx[others], readme[others])
    assert 8.0 < sel.pitch_deg < 14.0
    assert (sel.brow_offset_before < -0.04).all()  # every README brow point 4+ % of the eye distance too high
    assert np.abs(sel.brow_offset_after).max() < 0.04 and np.abs(sel.brow_offset_after).mean() < 0.02
    # Oracle for the reported offsets: recompute them by hand from the projection.
    core = np.arange(27, 68)
    proj = _project(mean[sel.landmark_idx], sel.pitch_deg)
    s, rot, t = umeyama(proj[core], MEAN_LANDMARKS_2D[core])
    mapped = proj @ (s * rot).T + t
    io = np.linalg.norm(MEAN_LANDMARKS_2D[42:48].mean(0) - MEAN_LANDMARKS_2D[36:42].mean(0))
    np.testing.assert_allclose((mapped[brows, 1] - MEAN_LANDMARKS_2D[brows, 1]) / io, sel.brow_offset_after, atol=1e-9)
    moved = np.linalg.norm(mean[sel.landmark_idx[brows]] - mean[readme[brows]], axis=1)
    assert (moved < BROW_RADIUS_MM).all() and (moved > 1.0).all()
    normals = ict_model.vertex_normals(ict_model.mean_shape[None].double())[0].numpy() @ _rot_x(sel.pitch_deg).T
    assert (normals[sel.landmark_idx[brows], 2] > BROW_FRONT_NZ).all()
    mirror = mirror_vertices(mean)
    assert mirror is not None
    assert all(mirror[sel.landmark_idx[j]] == sel.landmark_idx[43 - j] for j in range(17, 22))  # 17<->26, ..., 21<->22
    with pytest.raises(ValueError, match="brow landmark 17"):
        reselect_brows(mean, ict_model.mesh_tri.numpy(), np.zeros(len(mean), dtype=bool), readme)


def test_ict_jaw_sides_reselected_and_rest_kept(ict_model: FaceModel) -> None:
    readme = _readme_idx()
    lm = ict_model.landmark_idx.numpy()
    sides = list(JAW_SIDES)
    kept = [i for i in range(68) if i not in sides and i not in BROWS]
    assert np.array_equal(lm[kept], readme[kept])  # nose, eyes, mouth and chin 6-10: the README's
    assert (lm[sides] != readme[sides]).all()  # every side point moved
    mean = ict_model.mean_shape.double().numpy()
    pitch, inner = photo_pitch(mean, lm)
    assert 8.0 < pitch < 14.0 and inner < 0.015  # the inner points fit the reference at ~10.5 degrees
    # At that pitch the new side points lie on the outline, near the README's, and close to the reference jaw.
    normals = ict_model.vertex_normals(ict_model.mean_shape[None].double())[0].numpy() @ _rot_x(pitch).T
    assert (np.abs(normals[lm[sides], 2]) < OUTLINE_NZ).all()
    assert (np.linalg.norm(mean[lm[sides]] - mean[readme[sides]], axis=1) < CANDIDATE_RADIUS_MM).all()
    mapped, _, _, _ = _to_reference(_project(mean[lm], pitch))
    before, _, _, _ = _to_reference(_project(mean[readme], pitch))
    size = float(np.sqrt(np.prod(MEAN_LANDMARKS_2D.max(0) - MEAN_LANDMARKS_2D.min(0))))
    err_new = np.linalg.norm(mapped[sides] - MEAN_LANDMARKS_2D[sides], axis=1) / size
    err_old = np.linalg.norm(before[sides] - MEAN_LANDMARKS_2D[sides], axis=1) / size
    assert err_new.max() < 0.05 and err_old.mean() > 2 * err_new.mean(), (err_new, err_old)
    # the sides stay mirror pairs (j, 16 - j), as the README's are: a mirrored face has mirrored landmarks
    mirror = mirror_vertices(mean)
    assert mirror is not None
    assert all(mirror[lm[j]] == lm[16 - j] for j in range(8))
    # reselect_jaw on the README set reproduces the model's landmarks (the conversion's step).
    skin = ict_model.skin_mask.numpy() > 0.5
    brows = reselect_brows(mean, ict_model.mesh_tri.numpy(), _narrow(len(mean)), readme)
    sel = reselect_jaw(mean, ict_model.mesh_tri.numpy(), _narrow(len(mean)) & skin, brows.landmark_idx)
    assert np.array_equal(sel.landmark_idx, lm)
    assert sel.jaw_residual_after[sides].mean() < sel.jaw_residual_before[sides].mean()


def test_reselect_jaw_names_a_point_without_candidates(ict_model: FaceModel) -> None:
    mean = ict_model.mean_shape.numpy()
    none = np.zeros(len(mean), dtype=bool)
    with pytest.raises(ValueError, match="jaw landmark 0"):
        reselect_jaw(mean, ict_model.mesh_tri.numpy(), none, ict_model.landmark_idx.numpy())


def test_synthetic_pitch_is_centred_on_the_photo_pitch(ict_model: FaceModel) -> None:
    from msma.data.synthetic.dataset import SyntheticFaceDataset
    from msma.data.synthetic.sampling import SamplingSettings, sample_pose

    ds = SyntheticFaceDataset(ict_model, num_samples=4, image_size=32)
    pitch, _ = photo_pitch(ict_model.mean_shape.numpy(), ict_model.landmark_idx.numpy())
    assert ds.settings.pitch_mean_deg == pitch
    assert ds.settings_dict()["sampling"]["pitch_mean_deg"] == pitch  # part of the cache key
    angles = torch.rad2deg(sample_pose(torch.Generator().manual_seed(0), 20000, ds.settings))
    assert float(angles[:, 0].mean()) == pytest.approx(pitch, abs=0.3)
    assert float((angles[:, 0] - pitch).abs().max()) <= ds.settings.max_pitch_deg + 1e-6
    explicit = SyntheticFaceDataset(ict_model, num_samples=4, image_size=32, pitch_mean_deg=0.0)
    assert explicit.settings == SamplingSettings(pitch_mean_deg=0.0)
    assert explicit.cache_key() != ds.cache_key()
