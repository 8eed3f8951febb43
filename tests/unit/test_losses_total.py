"""FaceReconLoss: combination, weights, presets, masks, supervision rows, non-finite reporting."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from msma.data.batch import FaceBatch
from msma.face_model.output import FaceOutput
from msma.face_model.params import CoeffLayout, FaceParams
from msma.losses import FaceReconLoss, LossConfig, LossOutput, deep3d_loss_config, is_finite, loss_preset
from msma.losses.identity import build_iresnet
from msma.render.base import RenderOutput

B, S, N = 2, 32, 40
LAYOUT = CoeffLayout(6, 5, 4)


@dataclasses.dataclass
class Case:
    batch: FaceBatch
    flat: torch.Tensor  # (B, total) predicted coefficients, requires grad
    face: FaceOutput
    render: RenderOutput
    skin_vertices: torch.Tensor
    rendered: torch.Tensor  # leaf behind render.image
    lm2d: torch.Tensor  # leaf behind face.landmarks_2d
    albedo: torch.Tensor  # leaf behind face.albedo

    @property
    def params(self) -> FaceParams:
        return LAYOUT.split(self.flat)


def make_case(perfect: bool, gt_params: bool = False, seed: int = 0) -> Case:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(B, 3, S, S, generator=g)
    landmarks = torch.rand(B, 68, 2, generator=g) * (S - 1)
    if perfect:
        flat = torch.zeros(B, LAYOUT.total)
        rendered = image.clone()
        lm2d = landmarks.clone()
        albedo = torch.full((B, N, 3), 0.5)
    else:
        flat = torch.randn(B, LAYOUT.total, generator=g)
        rendered = torch.rand(B, 3, S, S, generator=g)
        lm2d = landmarks + torch.randn(B, 68, 2, generator=g)
        albedo = torch.rand(B, N, 3, generator=g)
    flat.requires_grad_(True)
    rendered.requires_grad_(True)
    lm2d.requires_grad_(True)
    albedo.requires_grad_(True)
    mask = torch.zeros(B, 1, S, S)
    mask[..., 4:28, 6:26] = 1.0
    verts = torch.randn(B, N, 3, generator=g)
    face = FaceOutput(
        vertices=verts,
        vertices_canonical=verts,
        normals=torch.nn.functional.normalize(torch.randn(B, N, 3, generator=g), dim=-1),
        albedo=albedo,
        color=albedo,
        landmarks_3d=torch.randn(B, 68, 3, generator=g),
        landmarks_2d=lm2d,
        clip=torch.randn(B, N, 4, generator=g),
        image_size=S,
    )
    render = RenderOutput(
        image=rendered * mask,
        mask=mask,
        depth=mask * 1000.0,
        normals=torch.zeros(B, 3, S, S),
        rast=torch.zeros(B, S, S, 4),
    )
    gt = (LAYOUT.join(LAYOUT.zeros(B)) if perfect else torch.randn(B, LAYOUT.total, generator=g)) if gt_params else None
    batch = FaceBatch(
        image=image * mask if perfect else image,
        landmarks=landmarks,
        landmark_valid=torch.ones(B, dtype=torch.bool),
        crop_to_image=torch.eye(3).expand(B, 3, 3),
        params=gt,
        params_valid=torch.ones(B, dtype=torch.bool) if gt_params else torch.zeros(B, dtype=torch.bool),
        vertices=None,
        landmarks_3d=None,
        yaw=torch.full((B,), float("nan")),
        skin_mask=torch.ones(B, 1, S, S),
    )
    skin_vertices = (torch.arange(N) % 3 != 0).float()
    return Case(batch, flat, face, render, skin_vertices, rendered, lm2d, albedo)


def run(loss: FaceReconLoss, c: Case) -> LossOutput:
    return loss(c.batch, c.params, c.face, c.render, c.skin_vertices)


def test_minimal_at_ground_truth_with_finite_gradients() -> None:
    c = make_case(perfect=True, gt_params=True)
    out = run(FaceReconLoss(), c)
    assert set(out.terms) == {"color", "lm", "reg", "gamma", "reflc", "param"}
    assert out.terms["color"].item() == pytest.approx(1.5 * 1e-3, rel=1e-3)  # sqrt(eps) floor
    for name in ("lm", "reg", "gamma", "reflc", "param"):
        assert out.terms[name].item() == pytest.approx(0.0, abs=1e-10), name
    out.total.backward()
    for leaf in (c.flat, c.rendered, c.lm2d, c.albedo):
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


def test_total_is_sum_of_terms_and_weights_scale_linearly() -> None:
    c = make_case(perfect=False, gt_params=True)
    base = run(FaceReconLoss(), c)
    assert base.total.item() == pytest.approx(sum(v.item() for v in base.terms.values()), rel=1e-5)
    for name, raw in base.raw.items():
        assert torch.isfinite(raw) and raw.item() > 0, name
    for term, weight_name in (("color", "w_color"), ("lm", "w_lm"), ("reg", "w_reg"), ("gamma", "w_gamma"),
                              ("reflc", "w_reflc"), ("param", "w_param")):  # fmt: skip
        cfg = LossConfig(**{weight_name: 3.0 * getattr(LossConfig(), weight_name)})
        out = run(FaceReconLoss(cfg), c)
        assert out.terms[term].item() == pytest.approx(3.0 * base.terms[term].item(), rel=1e-5), term
        others = sum(v.item() for k, v in base.terms.items() if k != term)
        assert out.total.item() == pytest.approx(others + 3.0 * base.terms[term].item(), rel=1e-5), term
    off = run(FaceReconLoss(LossConfig(w_lm=0.0)), c)
    assert "lm" not in off.terms
    # the inner regulariser weights act on their groups only
    reg_exp0 = run(FaceReconLoss(LossConfig(w_id=0.0, w_tex=0.0)), c).raw["reg"]
    p = c.params
    assert reg_exp0.item() == pytest.approx((1.1 * (p.exp**2).sum() / B).item(), rel=1e-5)


def test_presets_carry_the_published_weights() -> None:
    msma = loss_preset("msma")
    assert (msma.w_feat, msma.w_color, msma.w_reg, msma.w_id, msma.w_exp, msma.w_tex) == (
        0.35,
        1.5,
        5e-4,
        1.3,
        1.1,
        0.06,
    )
    assert (msma.w_gamma, msma.w_lm, msma.w_reflc) == (5.0, 0.01, 3.0)
    d3 = deep3d_loss_config()
    assert (d3.w_feat, d3.w_color, d3.w_reg, d3.w_id, d3.w_exp, d3.w_tex) == (0.2, 1.92, 3e-4, 1.0, 0.8, 1.7e-2)
    assert (d3.w_gamma, d3.w_lm, d3.w_reflc) == (10.0, 1.6e-3, 5.0)
    assert not msma.use_identity and msma.param_w_angles == 0.0 and msma.param_w_trans == 0.0
    with pytest.raises(ValueError, match="unknown loss preset"):
        loss_preset("nope")
    with pytest.raises(ValueError, match="w_lm"):
        LossConfig(w_lm=-1.0)
    with pytest.raises(ValueError, match="identity_arch"):
        LossConfig(identity_arch="r101")


def test_skin_mask_from_batch_or_image() -> None:
    c = make_case(perfect=False)
    loss = FaceReconLoss()
    with_ones = run(loss, c).raw["color"]
    half = dataclasses.replace(c.batch, skin_mask=torch.zeros(B, 1, S, S))
    half.skin_mask[..., : S // 2, :] = 1.0  # type: ignore[index]
    c_half = dataclasses.replace(c, batch=half)
    assert run(loss, c_half).raw["color"].item() != pytest.approx(with_ones.item(), rel=1e-4)
    # no mask in the batch: the skin GMM of the image is used (differs from ones on random colours)
    c_none = dataclasses.replace(c, batch=dataclasses.replace(c.batch, skin_mask=None))
    gmm = run(loss, c_none).raw["color"]
    assert torch.isfinite(gmm) and gmm.item() != pytest.approx(with_ones.item(), rel=1e-4)
    ones = run(FaceReconLoss(LossConfig(skin_from_image=False)), c_none).raw["color"]
    assert ones.item() == pytest.approx(with_ones.item(), rel=1e-6)


def test_supervision_only_with_ground_truth_rows() -> None:
    c = make_case(perfect=False, gt_params=False)
    assert "param" not in run(FaceReconLoss(), c).terms
    c_gt = make_case(perfect=False, gt_params=True)
    partial = dataclasses.replace(c_gt.batch, params_valid=torch.tensor([True, False]))
    out = run(FaceReconLoss(), dataclasses.replace(c_gt, batch=partial))
    p, t = c_gt.params, LAYOUT.split(c_gt.batch.params)  # type: ignore[arg-type]
    manual = sum(((getattr(p, g)[0] - getattr(t, g)[0]) ** 2).mean() for g in ("id", "exp", "tex"))
    assert out.raw["param"].item() == pytest.approx(float(manual.detach()), rel=1e-5)
    wrong = dataclasses.replace(c_gt.batch, params=torch.zeros(B, LAYOUT.total + 1))
    with pytest.raises(ValueError, match="same face-model space"):
        run(FaceReconLoss(), dataclasses.replace(c_gt, batch=wrong))


def test_invalid_landmark_rows_are_ignored() -> None:
    c = make_case(perfect=False)
    lm = c.batch.landmarks.clone()
    lm[1] = float("nan")
    batch = dataclasses.replace(c.batch, landmarks=lm, landmark_valid=torch.tensor([True, False]))
    out = run(FaceReconLoss(), dataclasses.replace(c, batch=batch))
    assert is_finite(out)
    out.total.backward()
    assert c.lm2d.grad is not None and torch.isfinite(c.lm2d.grad).all()
    assert c.lm2d.grad[1].abs().max() == 0.0 and c.lm2d.grad[0].abs().max() > 0


def test_non_finite_terms_are_reported() -> None:
    c = make_case(perfect=False)
    lm = c.lm2d.detach().clone()
    lm[0, 5] = float("nan")
    bad_face = dataclasses.replace(c.face, landmarks_2d=lm)
    out = run(FaceReconLoss(), dataclasses.replace(c, face=bad_face))
    assert not is_finite(out)
    assert out.nonfinite_terms() == ["lm", "total"]
    assert is_finite(run(FaceReconLoss(), c))


def test_shape_mismatch_errors() -> None:
    c = make_case(perfect=False)
    with pytest.raises(ValueError, match="projected at"):
        run(FaceReconLoss(), dataclasses.replace(c, face=dataclasses.replace(c.face, image_size=64)))


def test_identity_term(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="identity_weights"):
        FaceReconLoss(LossConfig(use_identity=True))
    missing = tmp_path / "backbone.pth"
    with pytest.raises(FileNotFoundError, match="backbone.pth"):
        FaceReconLoss(LossConfig(use_identity=True, identity_weights=str(missing)))
    torch.manual_seed(0)
    torch.save(build_iresnet("r18").state_dict(), missing)
    loss = FaceReconLoss(LossConfig(use_identity=True, identity_weights=str(missing), identity_arch="r18"))
    assert not any(k.startswith("identity") for k in loss.state_dict())
    c = make_case(perfect=False)
    out = run(loss, c)
    assert "feat" in out.terms
    assert out.terms["feat"].item() == pytest.approx(0.35 * out.raw["feat"].item(), rel=1e-6)
    assert 0.0 < out.raw["feat"].item() <= 2.0


@pytest.mark.gpu
def test_cuda_matches_cpu(tmp_path: Path) -> None:
    path = tmp_path / "backbone.pth"
    torch.manual_seed(0)
    torch.save(build_iresnet("r18").state_dict(), path)
    cfg = LossConfig(use_identity=True, identity_weights=str(path), identity_arch="r18")
    c = make_case(perfect=False, gt_params=True)
    c_none = dataclasses.replace(c, batch=dataclasses.replace(c.batch, skin_mask=None))
    cpu = run(FaceReconLoss(cfg), c_none)
    dev = torch.device("cuda")
    moved = Case(
        batch=c_none.batch.to(dev),
        flat=c.flat.detach().to(dev).requires_grad_(True),
        face=FaceOutput(**{k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in vars(c.face).items()}),
        render=RenderOutput(**{k: v.to(dev) for k, v in vars(c.render).items()}),
        skin_vertices=c.skin_vertices.to(dev),
        rendered=c.rendered,
        lm2d=c.lm2d,
        albedo=c.albedo,
    )
    gpu = run(FaceReconLoss(cfg).to(dev), moved)
    assert gpu.total.device.type == "cuda"
    for name, value in cpu.raw.items():
        assert gpu.raw[name].cpu().item() == pytest.approx(value.item(), rel=1e-3, abs=1e-5), name
    gpu.total.backward()
    assert moved.flat.grad is not None and torch.isfinite(moved.flat.grad).all()
