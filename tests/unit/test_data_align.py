"""Deep3D 5-point alignment and the AFLW2000-3D box crop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from msma.data.align import (
    ICT_TEMPLATE_5P_MM,
    align_face,
    alignment_transform,
    apply_affine,
    box_crop_transform,
    crop_by_box,
    estimate_scale_translation,
    recrop_transform,
    template_from_face_model,
    template_positions,
    warp_crop,
)
from msma.data.landmark_index import five_points_np


def _fake_landmarks(scale: float, shift: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """68 points whose 5 Deep3D points are exactly the frontal template at ``scale`` px/mm plus ``shift``."""
    lm = rng.normal(0.0, 20.0, size=(68, 2))
    pos = template_positions(ICT_TEMPLATE_5P_MM, 224)  # crop px at 1.02 px/mm, centre 111.5
    target = (pos - 111.5) / 1.02 * scale + np.asarray(shift)
    lm[30] = target[2]
    lm[36], lm[39] = target[0] - [5, 0], target[0] + [5, 0]
    lm[42], lm[45] = target[1] - [5, 0], target[1] + [5, 0]
    lm[48], lm[54] = target[3], target[4]
    return lm


def test_template_matches_ict_face_model(ict_model) -> None:  # type: ignore[no-untyped-def]
    derived = template_from_face_model(ict_model)
    np.testing.assert_allclose(derived, ICT_TEMPLATE_5P_MM, atol=0.01)
    # Sanity: eye centres ~6 cm apart, mouth below the eyes, nose tip in front.
    assert 55 < derived[1, 0] - derived[0, 0] < 72
    assert derived[3, 1] < derived[2, 1] < derived[0, 1]
    assert derived[2, 2] > derived[0, 2]


def test_template_positions_are_camera_projection(ict_model) -> None:  # type: ignore[no-untyped-def]
    """With zero coefficients the face model's 5 points land (almost) on the aligned template positions."""
    import torch

    with torch.no_grad():
        out = ict_model(ict_model.layout.zeros(1), 224)
    proj5 = five_points_np(out.landmarks_2d[0].double().numpy())
    # Perspective (1015 px at 1 m) vs Deep3D's orthographic 102 px per 0.1 m: a few tenths of a pixel apart,
    # plus the nose tip's depth.
    assert np.abs(proj5 - template_positions()).max() < 3.0


def test_pos_recovers_scale_and_translation() -> None:
    rng = np.random.default_rng(0)
    angle = math.radians(20)
    rot = np.array([[math.cos(angle), 0, math.sin(angle)], [0, 1, 0], [-math.sin(angle), 0, math.cos(angle)]])
    pts3 = ICT_TEMPLATE_5P_MM @ rot.T
    img = np.stack([300 + 2.5 * pts3[:, 0], 200 - 2.5 * pts3[:, 1]], axis=1)
    s, t = estimate_scale_translation(img + rng.normal(0, 0.01, img.shape), ICT_TEMPLATE_5P_MM)
    assert s == pytest.approx(2.5, rel=1e-3)
    np.testing.assert_allclose(t, [300, 200], atol=0.05)
    with pytest.raises(ValueError, match="finite"):
        estimate_scale_translation(img * np.nan, ICT_TEMPLATE_5P_MM)
    with pytest.raises(ValueError, match="K >= 4"):
        estimate_scale_translation(img[:3], ICT_TEMPLATE_5P_MM[:3])


@pytest.mark.parametrize(("scale", "shift"), [(1.02, (111.5, 111.5)), (3.7, (640.0, 410.0)), (0.6, (80.0, 90.0))])
def test_alignment_puts_five_points_on_template(scale: float, shift: tuple[float, float]) -> None:
    rng = np.random.default_rng(1)
    lm = _fake_landmarks(scale, shift, rng)
    image = rng.random((900, 1200, 3), dtype=np.float32)
    aligned = align_face(image, lm)
    assert aligned.image.shape == (224, 224, 3) and aligned.image.dtype == np.float32
    np.testing.assert_allclose(five_points_np(aligned.landmarks.astype(np.float64)), template_positions(), atol=0.05)
    # crop_to_image maps the crop landmarks back onto the original ones.
    np.testing.assert_allclose(apply_affine(aligned.crop_to_image, aligned.landmarks), lm, atol=1e-3)
    # Deep3D: scale + translation only.
    assert aligned.crop_to_image[0, 1] == 0 and aligned.crop_to_image[1, 0] == 0
    assert aligned.crop_to_image[0, 0] == pytest.approx(scale / 1.02, rel=1e-6)  # image px per crop px


def test_alignment_other_crop_size_scales_uniformly() -> None:
    lm = _fake_landmarks(2.0, (300, 300), np.random.default_rng(2))
    m224 = alignment_transform(lm, image_size=224)
    m112 = alignment_transform(lm, image_size=112)
    assert m112[0, 0] == pytest.approx(2 * m224[0, 0])
    pts = five_points_np(apply_affine(np.linalg.inv(m112), lm))
    np.testing.assert_allclose(pts, template_positions(image_size=112), atol=0.05)


def test_warp_crop_samples_the_right_pixels() -> None:
    """A crop of a linear ramp image is the ramp evaluated at crop_to_image(crop pixel)."""
    h, w = 300, 400
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.stack([xx / w, yy / h, np.full_like(xx, 0.5)], axis=2)
    m = np.array([[0.8, 0.0, 50.0], [0.0, 0.8, 30.0], [0.0, 0.0, 1.0]])
    crop = warp_crop(image, m, 64)
    src = apply_affine(m, np.array([[10.0, 20.0], [63.0, 0.0]]))
    assert crop[20, 10, 0] == pytest.approx(src[0, 0] / w, abs=1e-4)
    assert crop[20, 10, 1] == pytest.approx(src[0, 1] / h, abs=1e-4)
    assert crop[0, 63, 0] == pytest.approx(src[1, 0] / w, abs=1e-4)


def test_warp_crop_shrinking_antialiases_and_keeps_geometry() -> None:
    """Shrinking 8x: a fine checkerboard averages to grey (no aliasing), a ramp stays where it should."""
    h, w = 1600, 1600
    checker = ((np.indices((h, w)).sum(0) % 2) * 1.0).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.stack([checker, xx / w, yy / h], axis=2)
    m = np.array([[8.0, 0.0, 3.5], [0.0, 8.0, 3.5], [0.0, 0.0, 1.0]])  # crop covers the whole image
    crop = warp_crop(image, m, 200)
    assert np.abs(crop[5:-5, 5:-5, 0] - 0.5).max() < 0.05
    centre = apply_affine(m, np.array([[100.0, 50.0]]))[0]
    assert crop[50, 100, 1] == pytest.approx(centre[0] / w, abs=2e-3)
    assert crop[50, 100, 2] == pytest.approx(centre[1] / h, abs=2e-3)


def test_outside_pixels_are_black() -> None:
    image = np.ones((100, 100, 3), dtype=np.float32)
    m = np.array([[1.0, 0.0, -50.0], [0.0, 1.0, -50.0], [0.0, 0.0, 1.0]])
    crop = warp_crop(image, m, 100)
    assert crop[:40, :40].max() == 0.0 and crop[60:, 60:].min() == pytest.approx(1.0)


def test_recrop_on_exact_landmarks_is_the_aligned_crop_whatever_the_box() -> None:
    """Landmarks predicted exactly in a box crop give Deep3D's aligned crop of the true landmarks, the same from
    two different box crops (the second step no longer depends on the box); the aligned crop is a fixed point."""
    rng = np.random.default_rng(5)
    truth = _fake_landmarks(2.3, (310.0, 260.0), rng)  # image pixels
    aligned = alignment_transform(truth, ICT_TEMPLATE_5P_MM, 128)
    results = []
    for box in ((200.0, 150.0, 420.0, 380.0), (260.0, 120.0, 360.0, 400.0)):
        m0 = box_crop_transform(box, 128, 1.6)
        in_crop = apply_affine(np.linalg.inv(m0), truth)
        results.append(recrop_transform(in_crop, m0, ICT_TEMPLATE_5P_MM, 128))
        assert not np.allclose(m0, aligned, atol=1e-3)  # the box crop is not the aligned one
    for m1 in results:
        np.testing.assert_allclose(m1, aligned, rtol=1e-9, atol=1e-9)
    again = recrop_transform(apply_affine(np.linalg.inv(aligned), truth), aligned, ICT_TEMPLATE_5P_MM, 128)
    np.testing.assert_allclose(again, aligned, rtol=1e-9, atol=1e-9)
    # an error of the prediction moves the crop by that error (in image pixels)
    m0 = box_crop_transform((200.0, 150.0, 420.0, 380.0), 128, 1.6)
    shifted = recrop_transform(apply_affine(np.linalg.inv(m0), truth) + [2.0, 0.0], m0, ICT_TEMPLATE_5P_MM, 128)
    np.testing.assert_allclose(shifted[:2, 2] - aligned[:2, 2], [2.0 * m0[0, 0], 0.0], atol=1e-6)


@pytest.mark.parametrize("bad", [np.zeros((5, 2)), np.full((68, 2), np.nan)])
def test_recrop_rejects_bad_landmarks(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="re-cropping needs"):
        recrop_transform(bad, np.eye(3))


def test_box_crop_protocol() -> None:
    """Square centred on the box, side sqrt(2) * max(w, h), edges of the crop on the square's edges."""
    box = (100.0, 150.0, 180.0, 250.0)  # w 80, h 100
    m = box_crop_transform(box, 224)
    side = math.sqrt(2) * 100
    corners = apply_affine(m, np.array([[-0.5, -0.5], [223.5, 223.5]]))
    np.testing.assert_allclose(corners[0], [140 - side / 2, 200 - side / 2], atol=1e-9)
    np.testing.assert_allclose(corners[1], [140 + side / 2, 200 + side / 2], atol=1e-9)
    lm = np.array([[100.0, 150.0], [180.0, 250.0]] + [[140.0, 200.0]] * 66)
    image = np.zeros((400, 400, 3), dtype=np.float32)
    out = crop_by_box(image, box, lm, 224)
    assert out.landmarks[1, 1] - out.landmarks[0, 1] == pytest.approx(224 / math.sqrt(2), rel=1e-6)
    with pytest.raises(ValueError, match="no extent"):
        box_crop_transform((5.0, 5.0, 5.0, 5.0))


@pytest.mark.slow
def test_astronaut_aligned_crop(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """dlib landmarks on skimage's astronaut -> the crop puts eyes, nose and mouth on the template.

    Alignment is scale + translation only (Deep3D), so per-point residuals keep the head's small roll/pitch
    and the smile (mouth corners wider than the neutral template): a few pixels for the eyes and the mouth
    centre, < 2 px for the centroid and < 5 % for the scale.
    """
    import skimage.data

    from msma.data.detect import make_detector, select_faces
    from msma.data.landmarks import DlibLandmarks

    photo = skimage.data.astronaut()
    box = select_faces(make_detector("dlib").detect(photo), "largest")[0]
    lm = DlibLandmarks().detect(photo, box)
    aligned = align_face(photo.astype(np.float32) / 255.0, lm)
    got = five_points_np(aligned.landmarks.astype(np.float64))
    want = template_positions()
    eyes_err = np.linalg.norm(got[:2] - want[:2], axis=1)
    mouth_err = np.linalg.norm(got[3:].mean(0) - want[3:].mean(0))
    assert eyes_err.max() < 10.0 and mouth_err < 8.0, (eyes_err, mouth_err)
    assert np.linalg.norm(got.mean(0) - want.mean(0)) < 3.0
    spread = np.linalg.norm(got - got.mean(0), axis=1).mean() / np.linalg.norm(want - want.mean(0), axis=1).mean()
    assert spread == pytest.approx(1.0, abs=0.05)
    # The crop is the face: skin-coloured centre, plausible brightness.
    centre = aligned.image[90:130, 90:130].mean(axis=(0, 1))
    assert centre[0] > centre[2] and 0.4 < centre.mean() < 0.95
