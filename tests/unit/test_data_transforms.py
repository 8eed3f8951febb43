"""FaceAugment and the 68-point semantics: landmarks stay on the image features, flips re-index."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from msma.data import landmark_index as li
from msma.data.batch import FaceSample, collate_samples
from msma.data.transforms import FaceAugment, apply_affine_to_points
from msma.face_model.params import GROUPS

S = 96
# Well-separated points, each drawn as a dot of its own colour.
DOT_POINTS = (li.RIGHT_EYE_OUTER, li.LEFT_EYE_OUTER, li.NOSE_TIP, li.MOUTH_RIGHT, li.MOUTH_LEFT, li.CHIN, 0)
DOT_COLOURS = (
    (1.0, 0.0, 0.0),
    (0.0, 1.0, 0.0),
    (0.0, 0.0, 1.0),
    (1.0, 1.0, 0.0),
    (1.0, 0.0, 1.0),
    (0.0, 1.0, 1.0),
    (1.0, 1.0, 1.0),
)


def _read_pts(path: Path) -> np.ndarray:
    lines = path.read_text().splitlines()
    start = lines.index("{") + 1
    return np.array([[float(v) for v in line.split()] for line in lines[start : start + 68]])


@pytest.fixture(scope="module")
def face_landmarks(testdata: Path) -> torch.Tensor:
    """Real 68-point landmarks (einstein.pts) fitted into a centred box of the S x S crop."""
    pts = _read_pts(testdata / "faces68" / "einstein.pts")
    lo, hi = pts.min(0), pts.max(0)
    scale = 0.6 * S / (hi - lo).max()
    centred = (pts - (lo + hi) / 2) * scale + (S - 1) / 2
    return torch.tensor(centred, dtype=torch.float32)


def _dot_sample(landmarks: torch.Tensor) -> FaceSample:
    image = torch.zeros(3, S, S)
    yy, xx = torch.meshgrid(torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32), indexing="ij")
    for idx, colour in zip(DOT_POINTS, DOT_COLOURS):
        x, y = landmarks[idx]
        blob = torch.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.2**2))
        for c in range(3):
            image[c] = torch.maximum(image[c], blob * colour[c])
    skin = torch.zeros(1, S, S)
    skin[:, S // 4 : 3 * S // 4, S // 3 : 2 * S // 3] = 1.0
    return FaceSample(
        image=image,
        landmarks=landmarks.clone(),
        crop_to_image=torch.tensor([[2.0, 0.0, 10.0], [0.0, 2.0, 20.0], [0.0, 0.0, 1.0]]),
        params=torch.arange(12, dtype=torch.float32),
        vertices=torch.zeros(4, 3),
        landmarks_3d=torch.zeros(68, 3),
        yaw=25.0,
        skin_mask=skin,
        source="dots",
    )


def _dot_centre(image: torch.Tensor, colour: tuple[float, float, float]) -> torch.Tensor:
    """Intensity-weighted centroid (x, y) of the pixels that look like ``colour`` (pure dots, no jitter)."""
    col = torch.tensor(colour).view(3, 1, 1)
    on = col > 0.5
    # Response: min over the "on" channels, penalised by the "off" channels.
    resp = torch.where(on, image, torch.ones_like(image)).amin(0) - torch.where(
        ~on, image, torch.zeros_like(image)
    ).amax(0)
    resp = resp.clamp_min(0)
    resp = torch.where(resp > 0.3 * resp.max(), resp, torch.zeros_like(resp))
    ys, xs = torch.meshgrid(torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32), indexing="ij")
    w = resp.sum()
    assert w > 0, f"dot of colour {colour} vanished"
    return torch.stack([(resp * xs).sum() / w, (resp * ys).sum() / w])


# ----------------------------------------------------------------------------------------------- landmark_index
def test_mirror_permutation_is_an_involution_and_pairs_sides() -> None:
    perm = li.mirror_permutation()
    assert sorted(perm.tolist()) == list(range(68))
    assert torch.equal(perm[perm], torch.arange(68))
    assert perm[36] == 45 and perm[39] == 42 and perm[48] == 54 and perm[0] == 16 and perm[17] == 26
    assert perm[31] == 35 and perm[60] == 64 and perm[61] == 63 and perm[67] == 65 and perm[40] == 47
    for mid in (8, 27, 28, 29, 30, 33, 51, 57, 62, 66):
        assert perm[mid] == mid
    # groups map onto their mirror groups
    assert sorted(perm[list(li.RIGHT_EYE)].tolist()) == list(li.LEFT_EYE)
    assert sorted(perm[list(li.RIGHT_BROW)].tolist()) == list(li.LEFT_BROW)
    five = li.mirror_permutation(5)
    assert torch.equal(five[five], torch.arange(5))
    with pytest.raises(ValueError, match="no mirror permutation"):
        li.mirror_permutation(21)


def test_flip_landmarks_keeps_semantics(face_landmarks: torch.Tensor) -> None:
    lm = face_landmarks
    assert lm[36, 0] < lm[45, 0]  # the subject's right eye is on the viewer's left
    flipped = li.flip_landmarks(lm, S)
    assert flipped[36, 0] < flipped[45, 0]
    assert flipped[0, 0] < flipped[16, 0] and flipped[48, 0] < flipped[54, 0]
    torch.testing.assert_close(flipped[36], torch.stack([S - 1 - lm[45, 0], lm[45, 1]]))
    torch.testing.assert_close(li.flip_landmarks(flipped, S), lm)  # flipping twice is the identity
    # the 5 points of a flipped face = flipped 5 points of the face
    torch.testing.assert_close(li.five_points(flipped), li.flip_landmarks(li.five_points(lm), S))


def test_five_points_and_groups(face_landmarks: torch.Tensor) -> None:
    five = li.five_points(face_landmarks)
    assert five.shape == (5, 2)
    torch.testing.assert_close(five[0], face_landmarks[[36, 39]].mean(0))
    torch.testing.assert_close(five[2], face_landmarks[30])
    torch.testing.assert_close(torch.from_numpy(li.five_points_np(face_landmarks.numpy())), five)
    assert five[0, 0] < five[2, 0] < five[1, 0] and five[2, 1] < five[3, 1]
    covered = sorted(i for name in ("jaw", "brows", "nose", "eyes", "mouth") for i in li.GROUPS[name])
    assert covered == list(range(68))
    with pytest.raises(ValueError, match="68"):
        li.five_points(torch.zeros(5, 2))


# ------------------------------------------------------------------------------------------------ FaceAugment
@pytest.mark.parametrize("seed", range(6))
def test_augment_keeps_landmarks_on_image_features(face_landmarks: torch.Tensor, seed: int) -> None:
    aug = FaceAugment(image_size=S, shift_px=8, scale=0.1, rotate_deg=10, color_jitter=False, blur=False)
    sample = _dot_sample(face_landmarks)
    out = aug(sample, seed=seed)
    flipped = out.yaw < 0
    perm = li.MIRROR_68
    for idx, colour in zip(DOT_POINTS, DOT_COLOURS):
        where = _dot_centre(out.image, colour)
        expect = out.landmarks[perm[idx] if flipped else idx]
        assert torch.dist(where, expect) < 0.6, (seed, idx, where, expect)
    # crop_to_image maps the new crop landmarks to the same original-image points as before
    back = apply_affine_to_points(out.crop_to_image, out.landmarks)
    before = apply_affine_to_points(sample.crop_to_image, sample.landmarks)
    torch.testing.assert_close(back, before[list(perm)] if flipped else before, atol=1e-3, rtol=0)
    assert out.vertices is None  # a geometric transform always happened (p_affine=1)
    if flipped:
        assert out.params is None and out.landmarks_3d is None and out.yaw == -25.0
    else:
        assert out.params is not None and torch.equal(out.params, sample.params) and out.yaw == 25.0
    assert out.skin_mask is not None and out.skin_mask.shape == (1, S, S)
    assert 0.0 <= float(out.skin_mask.min()) and float(out.skin_mask.max()) <= 1.0


def test_flip_only_moves_the_eye_corner_dot(face_landmarks: torch.Tensor) -> None:
    """A pure flip: the dot drawn at the right eye's outer corner (36) is where landmark 45 now is."""
    aug = FaceAugment(image_size=S, geometric=False, color_jitter=False, blur=False, p_flip=1.0)
    sample = _dot_sample(face_landmarks)
    out = aug(sample, seed=0)
    assert out.yaw == -25.0 and out.params is None and out.vertices is None
    torch.testing.assert_close(out.landmarks, li.flip_landmarks(face_landmarks, S))
    red = _dot_centre(out.image, DOT_COLOURS[0])  # drawn at the original 36
    assert torch.dist(red, out.landmarks[45]) < 0.3
    assert out.landmarks[36, 0] < out.landmarks[45, 0]
    torch.testing.assert_close(out.image, sample.image.flip(-1))
    assert out.skin_mask is not None and torch.equal(out.skin_mask, sample.skin_mask.flip(-1))  # type: ignore[union-attr]


def test_no_geometric_transform_keeps_every_label(face_landmarks: torch.Tensor) -> None:
    aug = FaceAugment(image_size=S, geometric=False, flip=False, p_color=1.0, p_blur=1.0)
    sample = _dot_sample(face_landmarks)
    out = aug(sample, seed=3)
    assert torch.equal(out.landmarks, sample.landmarks)
    assert out.vertices is not None and out.params is not None and out.landmarks_3d is not None
    torch.testing.assert_close(out.crop_to_image, sample.crop_to_image)
    assert not torch.equal(out.image, sample.image)  # jitter and blur changed the pixels
    assert float(out.image.min()) >= 0.0 and float(out.image.max()) <= 1.0


def test_augment_is_deterministic_by_seed_and_handles_nan_and_outside(face_landmarks: torch.Tensor) -> None:
    aug = FaceAugment(image_size=S)
    lm = face_landmarks.clone()
    lm[3] = torch.tensor([-30.0, S + 40.0])  # outside the crop: kept, not removed or clipped
    lm[5] = float("nan")
    sample = _dot_sample(lm)
    a, b, c = aug(sample, seed=11), aug(sample, seed=11), aug(sample, seed=12)
    assert torch.equal(a.image, b.image)
    torch.testing.assert_close(a.landmarks, b.landmarks, equal_nan=True, rtol=0, atol=0)
    assert not torch.equal(a.image, c.image)
    assert a.landmarks.shape == (68, 2) and torch.isnan(a.landmarks[li.MIRROR_68[5] if a.yaw < 0 else 5]).all()
    assert int(torch.isnan(a.landmarks).any(1).sum()) == 1
    out_idx = li.MIRROR_68[3] if a.yaw < 0 else 3
    assert (a.landmarks[out_idx, 0] > S + 10 if a.yaw < 0 else a.landmarks[out_idx, 0] < -10) and a.landmarks[
        out_idx, 1
    ] > S
    batch = collate_samples([a, c])
    assert batch.image.shape == (2, 3, S, S)


def test_augment_rejects_wrong_size() -> None:
    aug = FaceAugment(image_size=S)
    bad = FaceSample(
        image=torch.zeros(3, S + 1, S + 1), landmarks=torch.zeros(68, 2), crop_to_image=torch.eye(3), source="x.png"
    )
    with pytest.raises(ValueError, match=r"x\.png"):
        aug(bad)
    with pytest.raises(ValueError, match="border_mode"):
        FaceAugment(border_mode="wrap")


def test_unseeded_calls_follow_torch_global_generator(face_landmarks: torch.Tensor) -> None:
    aug = FaceAugment(image_size=S, color_jitter=False, blur=False)
    sample = _dot_sample(face_landmarks)
    torch.manual_seed(5)
    a = aug(sample)
    b = aug(sample)
    torch.manual_seed(5)
    c = aug(sample)
    assert torch.equal(a.image, c.image) and not torch.equal(a.image, b.image)


@pytest.mark.parametrize("flip", [False, True])
def test_augment_moves_dense_landmarks_with_the_68(face_landmarks: torch.Tensor, flip: bool) -> None:
    """MediaPipe's dense points go through the same transform as the 68 landmarks: the dense points that mark the
    68 (MEDIAPIPE_TO_68) stay on them, after a flip too (MIRROR_468 re-indexing); z scales with the crop; a flip
    drops the iris points."""
    from msma.data.mediapipe_mesh import MEDIAPIPE_TO_68, MIRROR_468, NUM_DENSE, NUM_MESH

    g = torch.Generator().manual_seed(5)
    dense = torch.rand(NUM_DENSE, 3, generator=g) * torch.tensor([S - 1.0, S - 1.0, 20.0])
    dense[list(MEDIAPIPE_TO_68), :2] = face_landmarks
    sample = dataclasses.replace(_dot_sample(face_landmarks), dense=dense)
    aug = FaceAugment(image_size=S, color_jitter=False, blur=False, flip=flip, p_flip=1.0, scale=0.2)
    out = aug(sample, seed=7)
    assert (out.yaw < 0) == flip
    assert out.dense is not None and out.dense.shape == (NUM_DENSE, 3) and out.dense.dtype == torch.float32
    torch.testing.assert_close(out.dense[list(MEDIAPIPE_TO_68), :2], out.landmarks, atol=1e-3, rtol=0)
    scale = float(torch.sqrt(sample.crop_to_image[:2, :2].det().abs() / out.crop_to_image[:2, :2].det().abs()))
    assert abs(scale - 1.0) > 1e-3  # the crop was rescaled
    order = list(MIRROR_468) if flip else list(range(NUM_MESH))
    torch.testing.assert_close(out.dense[:NUM_MESH, 2], dense[order, 2] * scale, atol=1e-3, rtol=1e-5)
    assert bool(torch.isnan(out.dense[NUM_MESH:]).all()) == flip
    # Every dense point maps back through the new crop_to_image onto the original's place (its mirror's after a flip).
    back = apply_affine_to_points(torch.linalg.inv(sample.crop_to_image) @ out.crop_to_image, out.dense[:NUM_MESH, :2])
    torch.testing.assert_close(back, dense[order, :2], atol=2e-3, rtol=0)


def test_flip_keeps_the_mirrored_pose_exact(ict_model) -> None:  # type: ignore[no-untyped-def]
    """Oracle: the face model at the mirrored pose projects onto the flipped (re-indexed) landmarks of the face
    at the original pose; identity/expression/albedo/light are masked, and a moved sample keeps no pose."""
    layout = ict_model.layout
    p = layout.zeros(1).replace(angles=torch.tensor([[0.15, 0.6, -0.2]]), trans=torch.tensor([[12.0, -7.0, 20.0]]))
    with torch.no_grad():
        lm = ict_model(p, image_size=S).landmarks_2d[0]
    sample = FaceSample(
        image=torch.rand(3, S, S),
        landmarks=lm,
        crop_to_image=torch.eye(3),
        params=layout.join(p)[0],
        source="synthetic:0",
    )
    aug = FaceAugment(S, geometric=False, color_jitter=False, blur=False, p_flip=1.0, layout=layout)
    out = aug(sample, seed=0)
    assert out.param_groups == ("angles", "trans")
    mirrored = layout.split(out.params[None])
    torch.testing.assert_close(mirrored.angles, torch.tensor([[0.15, -0.6, 0.2]]))
    torch.testing.assert_close(mirrored.trans, torch.tensor([[-12.0, -7.0, 20.0]]))
    with torch.no_grad():
        expected = ict_model(mirrored, image_size=S).landmarks_2d[0]
    # The ICT mean face is mirror-symmetric (measured: 0.003 px here; a wrong roll or tx sign moves points 11-17 px).
    err = (out.landmarks - expected).norm(dim=-1)
    assert float(err.max()) < 0.05, float(err.max())
    # Without a layout a flip drops the coefficients; with a geometric move as well the pose is stale.
    assert FaceAugment(S, geometric=False, color_jitter=False, blur=False, p_flip=1.0)(sample, seed=0).params is None
    moved = FaceAugment(S, color_jitter=False, blur=False, p_flip=1.0, layout=layout)(sample, seed=0)
    assert moved.params is None and moved.param_groups is None


def test_flip_with_the_coefficient_mirror_keeps_every_group(ict_model) -> None:  # type: ignore[no-untyped-def]
    """Oracle: a face with identity, expression, albedo and light at a turned pose; after a flip with the coefficient
    mirror its kept coefficients project onto the flipped (re-indexed) landmarks, every group is kept (mirrored),
    and after a geometric move as well the non-pose groups are kept without the pose."""
    from msma.face_model.mirror import CoefficientMirror

    layout = ict_model.layout
    g = torch.Generator().manual_seed(7)
    p = layout.zeros(1).replace(
        id=0.8 * torch.randn(1, layout.n_id, generator=g),
        exp=torch.rand(1, layout.n_exp, generator=g) * 0.6,
        tex=torch.randn(1, layout.n_tex, generator=g),
        sh=0.2 * torch.randn(1, 27, generator=g),
        angles=torch.tensor([[0.1, 0.5, -0.15]]),
        trans=torch.tensor([[8.0, -5.0, 15.0]]),
    )
    with torch.no_grad():
        lm = ict_model(p, image_size=S).landmarks_2d[0]
    sample = FaceSample(
        image=torch.rand(3, S, S), landmarks=lm, crop_to_image=torch.eye(3), params=layout.join(p)[0], source="s:0"
    )
    mirror = CoefficientMirror.from_face_model(ict_model)
    aug = FaceAugment(S, geometric=False, color_jitter=False, blur=False, p_flip=1.0, layout=layout, mirror=mirror)
    out = aug(sample, seed=0)
    assert out.param_groups is None or set(out.param_groups) == set(GROUPS)
    kept = layout.split(out.params[None])
    torch.testing.assert_close(kept.angles, torch.tensor([[0.1, -0.5, 0.15]]))
    assert not torch.allclose(kept.exp, p.exp, atol=1e-2)  # left/right blendshapes swapped
    with torch.no_grad():
        expected = ict_model(kept, image_size=S).landmarks_2d[0]
        pose_only = ict_model(p.replace(angles=kept.angles, trans=kept.trans), image_size=S).landmarks_2d[0]
    err = (out.landmarks - expected).norm(dim=-1)
    err_pose_only = (out.landmarks - pose_only).norm(dim=-1)
    # measured: 0.03 px (the least-squares residual of the identity / expression maps); unmirrored shape: 3.9 px
    assert float(err.max()) < 0.2 and float(err_pose_only.max()) > 1.0, (float(err.max()), float(err_pose_only.max()))
    moved = FaceAugment(S, color_jitter=False, blur=False, p_flip=1.0, layout=layout, mirror=mirror)(sample, seed=0)
    assert moved.param_groups == ("id", "exp", "tex", "sh")
    torch.testing.assert_close(moved.params, out.params)
    with pytest.raises(ValueError, match="needs the coefficient layout"):
        FaceAugment(S, mirror=mirror)
