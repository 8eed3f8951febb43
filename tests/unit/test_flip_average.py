"""Mirrored poses (``msma.face_model.params.mirror_pose``) against the renderer's geometry, and the flip-averaged
prediction (``msma.pipeline.predict_params``) against encoders whose answers are known."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from msma.data.landmark_index import MIRROR_68
from msma.face_model.params import FaceParams, mirror_pose
from msma.pipeline import predict_params

SIZE = 64


def _posed(layout: Any, n: int = 4) -> FaceParams:
    g = torch.Generator().manual_seed(0)
    p = layout.zeros(n)
    return p.replace(angles=torch.randn(n, 3, generator=g) * 0.3, trans=torch.randn(n, 3, generator=g) * 10.0)


def test_mirrored_pose_projects_the_mirror_image_of_the_landmarks(ict_model: Any) -> None:
    """Oracle: the mean face is symmetric, so the landmarks of the mirrored pose are the posed landmarks mirrored
    about the crop's vertical centre line (x -> S - 1 - x) and re-indexed left <-> right."""
    p = _posed(ict_model.layout)
    with torch.no_grad():
        lm = ict_model(p, image_size=SIZE).landmarks_2d.double().numpy()
        lm_m = ict_model(mirror_pose(p), image_size=SIZE).landmarks_2d.double().numpy()
    want = lm[:, list(MIRROR_68)].copy()
    want[..., 0] = SIZE - 1 - want[..., 0]
    err = np.abs(lm_m - want).max()
    assert err < 0.05, err  # pixels at 64 px (the ICT mean face is symmetric to ~0.01 mm)
    # an involution that touches the pose only
    twice = mirror_pose(mirror_pose(p))
    for g, t in p.items():
        torch.testing.assert_close(getattr(twice, g), t)
    assert torch.equal(mirror_pose(p).id, p.id) and torch.equal(mirror_pose(p).sh, p.sh)


class _ConstantPose(nn.Module):
    """Predicts the same pose for any image (not mirror-equivariant) and an image-dependent identity."""

    def __init__(self, layout: Any, angles: list[float], trans: list[float]) -> None:
        super().__init__()
        self.layout, self.angles, self.trans = layout, torch.tensor([angles]), torch.tensor([trans])

    def forward(self, image: torch.Tensor) -> FaceParams:
        b = image.shape[0]
        p = self.layout.zeros(b)
        ident = p.id.clone()
        ident[:, 0] = image[:, 0, 0, 0]  # the top-left pixel: changes under a flip
        return p.replace(id=ident, angles=self.angles.repeat(b, 1), trans=self.trans.repeat(b, 1))


class _Equivariant(nn.Module):
    """Yaw, roll and tx read from the image's left-right asymmetry: exactly mirror-equivariant."""

    def __init__(self, layout: Any) -> None:
        super().__init__()
        self.layout = layout

    def forward(self, image: torch.Tensor) -> FaceParams:
        half = image.shape[-1] // 2
        d = image[..., :half].mean((1, 2, 3)) - image[..., half:].mean((1, 2, 3))
        p = self.layout.zeros(image.shape[0])
        angles = torch.stack([0.1 + 0 * d, d, 2 * d], 1)
        trans = torch.stack([5 * d, 1.0 + 0 * d, 3.0 + 0 * d], 1)
        return p.replace(angles=angles, trans=trans)


def test_flip_average_of_a_constant_pose_keeps_pitch_ty_tz_and_cancels_the_rest(ict_model: Any) -> None:
    image = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    enc = _ConstantPose(ict_model.layout, [0.2, 0.5, -0.1], [4.0, -2.0, 30.0])
    plain = predict_params(enc, image)
    avg = predict_params(enc, image, flip_average=True)
    torch.testing.assert_close(plain.angles[0], torch.tensor([0.2, 0.5, -0.1]))
    torch.testing.assert_close(avg.angles, torch.tensor([[0.2, 0.0, 0.0]]).repeat(3, 1))
    torch.testing.assert_close(avg.trans, torch.tensor([[0.0, -2.0, 30.0]]).repeat(3, 1))
    torch.testing.assert_close(avg.id, plain.id)  # the crop's own identity, not the mirror's


def test_flip_average_leaves_an_equivariant_network_unchanged(ict_model: Any) -> None:
    image = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    enc = _Equivariant(ict_model.layout)
    plain = predict_params(enc, image)
    avg = predict_params(enc, image, flip_average=True)
    assert float(plain.angles[:, 1].abs().min()) > 1e-4  # the test has something to average
    for g, t in plain.items():
        torch.testing.assert_close(getattr(avg, g), t)


def test_flip_average_runs_the_crops_and_mirrors_as_one_batch_equal_to_two_passes(ict_model: Any) -> None:
    """Oracle: two separate encoder passes (crop, mirror) and the pose average written out; the batched pass must
    give the same coefficients with one forward call (a real msma_spatial encoder in eval mode: BatchNorm uses its
    running statistics, so rows are independent)."""
    from msma.models import build_encoder

    torch.manual_seed(0)
    enc = build_encoder("msma_spatial", ict_model.layout, backbone="resnet18").eval()
    with torch.no_grad():  # the heads start at zero (the mean face): give them weights so the pose varies
        for w in enc.parameters():
            if not bool(w.any()):
                w.normal_(0.0, 0.05)
    calls: list[int] = []
    enc.register_forward_hook(lambda _m, args, _out: calls.append(int(args[0].shape[0])))
    image = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = predict_params(enc, image, flip_average=True)
        assert calls == [6]  # one pass over the 3 crops and their 3 mirrors
        plain, flipped = enc(image), mirror_pose(enc(image.flip(-1)))
    torch.testing.assert_close(got.angles, 0.5 * (plain.angles + flipped.angles), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.trans, 0.5 * (plain.trans + flipped.trans), rtol=1e-4, atol=1e-4)
    for g in ("id", "exp", "tex", "sh"):
        torch.testing.assert_close(getattr(got, g), getattr(plain, g), rtol=1e-4, atol=1e-5)
    assert float((plain.angles - flipped.angles).abs().max()) > 1e-4  # an untrained network: the average matters
