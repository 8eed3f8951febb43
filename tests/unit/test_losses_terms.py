"""Individual loss terms: photometric, landmark, regularisers, supervision, skin model."""

from __future__ import annotations

import math

import pytest
import torch

from msma.face_model.params import CoeffLayout, FaceParams
from msma.losses.landmark import HEAVY_LANDMARKS, LandmarkLoss, deep3d_landmark_weights, landmark_loss
from msma.losses.photometric import PhotometricLoss, photometric_loss
from msma.losses.regularization import coefficient_regularization, gamma_loss, reflectance_loss
from msma.losses.skin import rgb_to_ycbcr, skin_probability
from msma.losses.supervision import param_supervision_loss

EPS_FLOOR = math.sqrt(1e-6)  # photometric loss at a perfect match (sqrt of Deep3D's eps)


# --------------------------------------------------------------------------------------------- photometric
def test_photometric_minimal_at_ground_truth_with_finite_gradient() -> None:
    torch.manual_seed(0)
    image = torch.rand(2, 3, 8, 8)
    rendered = image.clone().requires_grad_(True)
    mask = torch.rand(2, 1, 8, 8)
    loss = photometric_loss(image, rendered, mask)
    assert loss.item() == pytest.approx(EPS_FLOOR, rel=1e-4)
    loss.backward()
    assert rendered.grad is not None and torch.isfinite(rendered.grad).all()
    assert rendered.grad.abs().max() < 1e-6


def test_photometric_value_is_masked_mean_colour_distance() -> None:
    image = torch.zeros(1, 3, 4, 4)
    rendered = torch.zeros(1, 3, 4, 4)
    rendered[:, 0] = 0.3
    rendered[:, 1] = 0.4  # per-pixel distance 0.5
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 0.5
    loss = photometric_loss(image, rendered, mask, eps=0.0)
    assert loss.item() == pytest.approx(0.5, abs=1e-6)


def test_photometric_mask_excludes_pixels_and_detaches_render_mask() -> None:
    torch.manual_seed(1)
    image = torch.rand(2, 3, 8, 8)
    rendered = torch.rand(2, 3, 8, 8, requires_grad=True)
    render_mask = torch.zeros(2, 1, 8, 8)
    render_mask[..., 2:6, 2:6] = 1.0
    render_mask.requires_grad_(True)
    skin = torch.ones(2, 1, 8, 8)
    skin[..., 2:4, 2:6] = 0.0  # no skin on the top half of the face region
    loss_fn = PhotometricLoss()
    loss = loss_fn(image, rendered, render_mask, skin)
    # changing the image where the mask is zero does nothing
    changed = image.clone()
    changed[..., :2, :] = 1.0 - changed[..., :2, :]
    changed[..., 2:4, 2:6] = 0.0
    assert loss_fn(changed, rendered, render_mask, skin).item() == pytest.approx(loss.item(), rel=1e-6)
    loss.backward()
    assert render_mask.grad is None
    assert rendered.grad is not None
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[4:6, 2:6] = False
    assert rendered.grad[..., outside].abs().max() == 0.0
    assert rendered.grad[..., 4:6, 2:6].abs().sum() > 0


def test_photometric_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="mask"):
        photometric_loss(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4))


# ------------------------------------------------------------------------------------------------ landmark
def test_landmark_heavy_indices_are_deep3d_zero_based() -> None:
    # Deep3D: weight[28:31] = 20; weight[-8:] = 20 (NumPy, 0-based) -> 28, 29, 30 and 60..67.
    assert set(HEAVY_LANDMARKS) == {28, 29, 30, 60, 61, 62, 63, 64, 65, 66, 67}
    w = deep3d_landmark_weights()
    assert w.shape == (68,)
    assert w.sum().item() == 57 + 11 * 20


def test_landmark_zero_at_ground_truth_with_finite_gradient() -> None:
    target = torch.rand(3, 68, 2) * 224
    pred = target.clone().requires_grad_(True)
    loss = LandmarkLoss()(pred, target, torch.ones(3, dtype=torch.bool), 224)
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()


@pytest.mark.parametrize("k", range(68))
def test_landmark_weight_per_point(k: int) -> None:
    target = torch.zeros(1, 68, 2)
    pred = target.clone()
    pred[0, k, 0] = 1.0  # one pixel off on point k
    loss = landmark_loss(pred, target, image_size=224)
    expected = (20.0 if k in HEAVY_LANDMARKS else 1.0) / 68
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_landmark_invalid_rows_contribute_nothing() -> None:
    torch.manual_seed(2)
    target = torch.rand(3, 68, 2) * 224
    pred = (target + torch.randn(3, 68, 2)).requires_grad_(True)
    target_nan = target.clone()
    target_nan[1] = float("nan")
    valid = torch.tensor([True, False, True])
    loss = landmark_loss(pred, target_nan, valid)
    ref = landmark_loss(pred[[0, 2]].detach(), target[[0, 2]])
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    assert pred.grad[1].abs().max() == 0.0
    # a valid-flagged row with finite garbage is still ignored when flagged invalid
    garbage = target.clone()
    garbage[1] = 1e6
    assert landmark_loss(pred.detach(), garbage, valid).item() == pytest.approx(ref.item(), rel=1e-6)


def test_landmark_no_valid_row_gives_zero_connected_to_graph() -> None:
    pred = torch.rand(2, 68, 2, requires_grad=True)
    loss = landmark_loss(pred, torch.full((2, 68, 2), float("nan")), torch.zeros(2, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().max() == 0.0


def test_landmark_normalised_to_224_pixels() -> None:
    target = torch.zeros(1, 68, 2)
    pred = torch.zeros(1, 68, 2)
    pred[0, 0, 0] = 1.0
    at_224 = landmark_loss(pred, target, image_size=224)
    at_112 = landmark_loss(pred, target, image_size=112)  # one pixel at 112 is two pixels at 224
    assert at_112.item() == pytest.approx(4 * at_224.item(), rel=1e-6)


# ------------------------------------------------------------------------------------------ regularisers
def _params(b: int, layout: CoeffLayout, seed: int = 0) -> FaceParams:
    g = torch.Generator().manual_seed(seed)
    return layout.split(torch.randn(b, layout.total, generator=g))


def test_coefficient_regularization_value_zero_and_linear_weights() -> None:
    layout = CoeffLayout(5, 4, 3)
    p = _params(2, layout)
    expected = (1.3 * (p.id**2).sum() + 1.1 * (p.exp**2).sum() + 0.06 * (p.tex**2).sum()) / 2
    assert coefficient_regularization(p, 1.3, 1.1, 0.06).item() == pytest.approx(expected.item(), rel=1e-6)
    assert coefficient_regularization(layout.zeros(2), 1.3, 1.1, 0.06).item() == 0.0
    only_id = coefficient_regularization(p, 1.0, 0.0, 0.0)
    assert coefficient_regularization(p, 3.0, 0.0, 0.0).item() == pytest.approx(3 * only_id.item(), rel=1e-6)
    flat = layout.join(p).requires_grad_(True)
    coefficient_regularization(layout.split(flat), 1.3, 1.1, 0.06).backward()
    assert flat.grad is not None and torch.isfinite(flat.grad).all()
    assert flat.grad[:, layout.slices["sh"]].abs().max() == 0.0


def test_gamma_loss_zero_for_monochromatic_light_and_known_value() -> None:
    mono = torch.randn(2, 1, 9).expand(2, 3, 9).reshape(2, 27)
    assert gamma_loss(mono).item() == pytest.approx(0.0, abs=1e-12)
    assert gamma_loss(mono + 0.8).item() == pytest.approx(0.0, abs=1e-12)
    sh = torch.zeros(1, 3, 9)
    sh[0, 0, 0] = 3.0  # red DC 3, others 0 -> mean 1, deviations (2, -1, -1) on 1 of 9 bands
    assert gamma_loss(sh.reshape(1, 27)).item() == pytest.approx((4 + 1 + 1) / 27, rel=1e-6)
    x = torch.randn(2, 27, requires_grad=True)
    gamma_loss(x).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def _deep3d_reflectance(texture: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Deep3D's formula for a 0/1 mask (written out for comparison)."""
    m = mask.reshape(1, -1, 1)
    mean = (m * texture).sum(dim=1, keepdim=True) / m.sum()
    return (((texture - mean) * m) ** 2).sum() / (texture.shape[0] * m.sum())


def test_reflectance_loss_matches_deep3d_and_ignores_non_skin() -> None:
    torch.manual_seed(3)
    albedo = torch.rand(2, 20, 3, requires_grad=True)
    mask = (torch.rand(20) > 0.5).float()
    mask[0] = 1.0
    loss = reflectance_loss(albedo, mask)
    assert loss.item() == pytest.approx(_deep3d_reflectance(albedo.detach(), mask).item(), rel=1e-5)
    loss.backward()
    assert albedo.grad is not None and torch.isfinite(albedo.grad).all()
    assert albedo.grad[:, mask == 0].abs().max() == 0.0
    uniform = torch.full((2, 20, 3), 0.6)
    uniform[:, mask == 0] = torch.rand(int((mask == 0).sum()), 3)  # non-skin albedo may vary freely
    assert reflectance_loss(uniform, mask).item() == pytest.approx(0.0, abs=1e-12)


def test_reflectance_loss_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        reflectance_loss(torch.rand(1, 4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="skin vertex mask"):
        reflectance_loss(torch.rand(1, 4, 3), torch.ones(5))


# ----------------------------------------------------------------------------------------- supervision
def test_param_supervision_zero_at_ground_truth_and_invalid_rows_ignored() -> None:
    layout = CoeffLayout(6, 5, 4)
    gt = _params(3, layout, seed=4)
    flat = layout.join(gt).clone().requires_grad_(True)
    valid = torch.tensor([True, False, True])
    loss = param_supervision_loss(layout.split(flat), gt, valid)
    assert loss.item() == 0.0
    loss.backward()
    assert flat.grad is not None and torch.isfinite(flat.grad).all()

    pred = _params(3, layout, seed=5)
    target_flat = layout.join(gt).clone()
    target_flat[1] = float("nan")  # a row without ground truth
    loss = param_supervision_loss(pred, layout.split(target_flat), valid)
    ref = param_supervision_loss(pred[torch.tensor([0, 2])], gt[torch.tensor([0, 2])], torch.ones(2, dtype=torch.bool))
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    manual = sum(((getattr(pred, g)[[0, 2]] - getattr(gt, g)[[0, 2]]) ** 2).mean(dim=1) for g in ("id", "exp", "tex"))
    assert loss.item() == pytest.approx(manual.mean().item(), rel=1e-6)


def test_param_supervision_pose_groups_off_by_default_and_weights_linear() -> None:
    layout = CoeffLayout(3, 3, 3)
    gt = _params(2, layout, seed=6)
    moved = gt.replace(angles=gt.angles + 0.3, trans=gt.trans + 10.0, sh=gt.sh + 1.0)
    ok = torch.ones(2, dtype=torch.bool)
    assert param_supervision_loss(moved, gt, ok).item() == 0.0
    on = {"angles": 1.0}
    assert param_supervision_loss(moved, gt, ok, on).item() == pytest.approx(0.09, rel=1e-5)
    assert param_supervision_loss(moved, gt, ok, {"angles": 2.0}).item() == pytest.approx(0.18, rel=1e-5)
    with pytest.raises(ValueError, match="unknown"):
        param_supervision_loss(moved, gt, ok, {"pose": 1.0})


def test_param_supervision_no_valid_rows() -> None:
    layout = CoeffLayout(3, 3, 3)
    flat = torch.randn(2, layout.total, requires_grad=True)
    loss = param_supervision_loss(layout.split(flat), layout.zeros(2), torch.zeros(2, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert flat.grad is not None and flat.grad.abs().max() == 0.0


# ---------------------------------------------------------------------------------------------- skin
def _direct_gmm_posterior(rgb: torch.Tensor) -> torch.Tensor:
    """Deep3D's formula evaluated directly (not in log space), float64, for (P, 3) RGB in [0, 1]."""
    from msma.losses import skin as s

    ycc = rgb_to_ycbcr(rgb.double().T.reshape(1, 3, -1, 1)).reshape(3, -1).T

    def lh(w, mu, det, inv):  # type: ignore[no-untyped-def]
        out = torch.zeros(ycc.shape[0], dtype=torch.float64)
        for k in range(4):
            d = ycc - torch.tensor(mu[k], dtype=torch.float64)
            q = ((d @ torch.tensor(inv[k], dtype=torch.float64)) * d).sum(1)
            out += w[k] * torch.exp(-0.5 * q) / ((2 * math.pi) ** 1.5 * det[k] ** 0.5)
        return out

    a = 0.8 * lh(s._SKIN_W, s._SKIN_MU, s._SKIN_COV_DET, s._SKIN_COV_INV)
    b = 0.2 * lh(s._NONSKIN_W, s._NONSKIN_MU, s._NONSKIN_COV_DET, s._NONSKIN_COV_INV)
    return a / (a + b)


def test_ycbcr_of_known_colours() -> None:
    rgb = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).T.reshape(1, 3, 3, 1)
    ycc = rgb_to_ycbcr(rgb).reshape(3, 3).T
    assert torch.allclose(ycc[0], torch.tensor([235.0, 128.0, 128.0]), atol=1e-3)
    assert torch.allclose(ycc[1], torch.tensor([16.0, 128.0, 128.0]), atol=1e-3)
    assert torch.allclose(ycc[2], torch.tensor([81.481, 90.203, 240.0]), atol=1e-3)


def test_skin_probability_matches_direct_gmm_and_separates_colours() -> None:
    rgb = torch.tensor(
        [[0.87, 0.67, 0.55], [0.76, 0.57, 0.45], [0.55, 0.38, 0.28], [0.0, 0.0, 1.0], [0.0, 0.8, 0.1], [0.5, 0.5, 0.5]]
    )
    image = rgb.T.reshape(1, 3, 6, 1)
    p = skin_probability(image)
    assert p.shape == (1, 1, 6, 1) and p.dtype == image.dtype
    direct = _direct_gmm_posterior(rgb)
    assert torch.allclose(p.flatten().double(), direct, atol=1e-5)
    assert (p.flatten()[:3] > 0.9).all()
    assert (p.flatten()[3:] < 0.1).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_skin_probability_precision_on_random_colours(dtype: torch.dtype) -> None:
    rgb = torch.rand(4000, 3, generator=torch.Generator().manual_seed(7))
    image = rgb.T.reshape(1, 3, 40, 100).to(dtype)
    direct = _direct_gmm_posterior(image.reshape(3, -1).T.double())
    p = skin_probability(image)
    assert p.dtype == dtype
    assert torch.allclose(p.flatten().double(), direct, atol=1e-4 if dtype == torch.float32 else 1e-10)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision must not degrade the mask
        p_amp = skin_probability(image)
    assert torch.allclose(p_amp.flatten().double(), direct, atol=1e-4 if dtype == torch.float32 else 1e-10)


def test_skin_probability_on_a_photo() -> None:
    skimage_data = pytest.importorskip("skimage.data")
    image = torch.tensor(skimage_data.astronaut()).permute(2, 0, 1)[None].float() / 255.0
    p = skin_probability(image[..., ::2, ::2].contiguous())  # 256 x 256
    assert ((p >= 0) & (p <= 1)).all()
    face = p[0, 0, 30:55, 90:115].mean()  # cheek and nose of the astronaut
    background = p[0, 0, 0:20, 0:30].mean()  # dark background, top left
    assert face > 0.75
    assert background < 0.3
