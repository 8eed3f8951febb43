"""Mixed-source batches: every loss term sees exactly the samples that carry its target (hand-computed)."""

from __future__ import annotations

import math

import pytest
import torch

from msma.data.batch import FaceSample, collate_samples
from msma.face_model.output import FaceOutput
from msma.face_model.params import GROUPS, CoeffLayout
from msma.losses import FaceReconLoss, LossConfig
from msma.losses.landmark import deep3d_landmark_weights
from msma.render.base import RenderOutput

S, N = 32, 40
LAYOUT = CoeffLayout(6, 5, 4)
SYN, PHOTO, LP = 0, 1, 2


def _samples(g: torch.Generator) -> list[FaceSample]:
    def base(source: int, landmarks: bool) -> dict[str, object]:
        lm = torch.rand(68, 2, generator=g) * (S - 1)
        return {
            "image": torch.rand(3, S, S, generator=g),
            "landmarks": lm if landmarks else torch.full((68, 2), math.nan),
            "crop_to_image": torch.eye(3),
            "source_index": source,
        }

    gt = lambda: torch.randn(LAYOUT.total, generator=g)  # noqa: E731
    return [
        # synthetic: every target (all coefficient groups, vertices, its own skin mask)
        FaceSample(
            **base(SYN, True),
            params=gt(),
            vertices=torch.randn(N, 3, generator=g),
            skin_mask=torch.rand(1, S, S, generator=g),
        ),  # type: ignore[arg-type]  # fmt: skip
        # photo with a fitted pseudo-label: landmarks + id/exp/tex
        FaceSample(**base(PHOTO, True), params=gt(), param_groups=("id", "exp", "tex")),  # type: ignore[arg-type]
        # photo without a fit: landmarks only
        FaceSample(**base(PHOTO, True)),  # type: ignore[arg-type]
        # 300W-LP: landmarks + the pose groups only
        FaceSample(**base(LP, True), params=gt(), param_groups=("angles", "trans")),  # type: ignore[arg-type]
        # a photo whose landmarks are not supervised
        FaceSample(**base(PHOTO, False)),  # type: ignore[arg-type]
    ]


def _prediction(b: int, g: torch.Generator) -> tuple[torch.Tensor, FaceOutput, RenderOutput, torch.Tensor]:
    flat = torch.randn(b, LAYOUT.total, generator=g, requires_grad=True)
    lm2d = torch.rand(b, 68, 2, generator=g) * (S - 1)
    albedo = torch.rand(b, N, 3, generator=g)
    mask = torch.zeros(b, 1, S, S)
    mask[..., 4:28, 6:26] = 1.0
    verts = torch.randn(b, N, 3, generator=g)
    face = FaceOutput(
        vertices=verts,
        vertices_canonical=verts,
        normals=torch.nn.functional.normalize(torch.randn(b, N, 3, generator=g), dim=-1),
        albedo=albedo,
        color=albedo,
        landmarks_3d=torch.randn(b, 68, 3, generator=g),
        landmarks_2d=lm2d,
        clip=torch.randn(b, N, 4, generator=g),
        image_size=S,
    )
    render = RenderOutput(
        image=torch.rand(b, 3, S, S, generator=g) * mask,
        mask=mask,
        depth=mask * 1000.0,
        normals=torch.zeros(b, 3, S, S),
        rast=torch.zeros(b, S, S, 4),
    )
    return flat, face, render, (torch.arange(N) % 3 != 0).float()


def test_each_term_sees_exactly_the_samples_with_its_target() -> None:
    g = torch.Generator().manual_seed(0)
    samples = _samples(g)
    batch = collate_samples(samples)
    b = batch.batch_size
    assert batch.sources().tolist() == [SYN, PHOTO, PHOTO, LP, PHOTO]
    assert batch.landmark_valid.tolist() == [True, True, True, True, False]
    assert batch.target_valid("vertices").tolist() == [True, False, False, False, False]
    assert batch.target_valid("skin_mask").tolist() == [True, False, False, False, False]
    assert batch.group_valid().tolist() == [
        [True] * 6,
        [g in ("id", "exp", "tex") for g in GROUPS],
        [False] * 6,
        [g in ("angles", "trans") for g in GROUPS],
        [False] * 6,
    ]
    flat, face, render, skin_vertices = _prediction(b, g)
    cfg = LossConfig(
        use_identity=False,
        w_param=1.0,
        param_w_id=1.0,
        param_w_exp=2.0,
        param_w_tex=0.5,
        param_w_angles=3.0,
        param_w_sh=0.25,
        param_w_trans=0.1,
    )
    loss = FaceReconLoss(cfg)
    out = loss(batch, LAYOUT.split(flat), face, render, skin_vertices)

    # Landmarks: rows 0-3 only, normalised by 4 x 68 (not the batch of 5); squared pixels at 224 px.
    w = deep3d_landmark_weights() * (224 / S) ** 2
    rows = [0, 1, 2, 3]
    lm = sum(((face.landmarks_2d[r] - batch.landmarks[r]) ** 2).sum(-1).mul(w).sum() for r in rows) / (4 * 68)
    assert out.raw["lm"].item() == pytest.approx(lm.item(), rel=1e-5)
    assert out.counts["lm"] == 4

    # Coefficients, per group over the rows that carry it: id/exp/tex rows 0, 1; angles/trans rows 0, 3; sh row 0.
    gw = cfg.param_group_weights()
    pred, tgt = LAYOUT.split(flat), LAYOUT.split(batch.params)  # type: ignore[arg-type]
    carriers = {"id": [0, 1], "exp": [0, 1], "tex": [0, 1], "angles": [0, 3], "sh": [0], "trans": [0, 3]}
    expected = 0.0
    for grp, rs in carriers.items():
        p, t = getattr(pred, grp), getattr(tgt, grp)
        expected += gw[grp] * sum(((p[r] - t[r]) ** 2).mean().item() for r in rs) / len(rs)
    assert out.raw["param"].item() == pytest.approx(expected, rel=1e-5)
    assert out.counts["param"] == 3  # rows 0, 1, 3

    # Photometric: the synthetic sample's own skin mask, the skin model's probability elsewhere.
    from msma.losses.skin import skin_probability

    att = skin_probability(batch.image)
    att[0] = batch.skin_mask[0]  # type: ignore[index]
    m = render.mask * att
    dist = torch.sqrt(1e-6 + ((batch.image - render.image) ** 2).sum(1, keepdim=True))
    assert out.raw["color"].item() == pytest.approx(((dist * m).sum() / m.sum()).item(), rel=1e-5)

    # The priors act on every prediction.
    reg = (cfg.w_id * (pred.id**2).sum() + cfg.w_exp * (pred.exp**2).sum() + cfg.w_tex * (pred.tex**2).sum()) / b
    assert out.raw["reg"].item() == pytest.approx(reg.item(), rel=1e-5)
    assert out.counts["reg"] == b

    # Per source: the same terms over each source's rows.
    assert sorted(out.by_source) == [SYN, PHOTO, LP]
    lm_photo = sum(((face.landmarks_2d[r] - batch.landmarks[r]) ** 2).sum(-1).mul(w).sum() for r in (1, 2)) / (2 * 68)
    assert out.by_source[PHOTO]["lm"].item() == pytest.approx(lm_photo.item(), rel=1e-5)
    lp_param = sum(gw[grp] * ((getattr(pred, grp)[3] - getattr(tgt, grp)[3]) ** 2).mean().item()
                   for grp in ("angles", "trans"))  # fmt: skip
    assert out.by_source[LP]["param"].item() == pytest.approx(lp_param, rel=1e-5)
    photo_param = sum(gw[grp] * ((getattr(pred, grp)[1] - getattr(tgt, grp)[1]) ** 2).mean().item()
                      for grp in ("id", "exp", "tex"))  # fmt: skip
    assert out.by_source[PHOTO]["param"].item() == pytest.approx(photo_param, rel=1e-5)

    # Gradients flow only into the supervised coefficient groups of each row (param term alone).
    only_param = FaceReconLoss(
        LossConfig(
            use_identity=False,
            w_color=0,
            w_lm=0,
            w_reg=0,
            w_gamma=0,
            w_reflc=0,
            w_param=1.0,
            param_w_angles=1.0,
            param_w_trans=1.0,
            param_w_sh=1.0,
        )  # fmt: skip
    )
    flat.grad = None
    only_param(batch, LAYOUT.split(flat), face, render, skin_vertices).total.backward()
    assert flat.grad is not None
    grad = LAYOUT.split(flat.grad)
    for grp in GROUPS:
        has = batch.group_valid()[:, GROUPS.index(grp)]
        nonzero = getattr(grad, grp).abs().sum(dim=1) > 0
        assert nonzero.tolist() == has.tolist(), grp


def test_single_source_batches_keep_todays_values() -> None:
    # Every sample with every target: the per-group normalisation equals the per-row one, no per-source split.
    g = torch.Generator().manual_seed(1)
    samples = [s for s in _samples(g) if s.source_index == SYN] * 3
    batch = collate_samples(samples)
    assert batch.param_group_valid is None and batch.vertices_valid is None and batch.skin_valid is None
    flat, face, render, skin_vertices = _prediction(batch.batch_size, g)
    out = FaceReconLoss(LossConfig(use_identity=False, w_param=1.0))(
        batch, LAYOUT.split(flat), face, render, skin_vertices
    )
    assert out.by_source == {}
    gw = LossConfig().param_group_weights()
    pred, tgt = LAYOUT.split(flat), LAYOUT.split(batch.params)  # type: ignore[arg-type]
    per_row = [sum(gw[k] * ((getattr(pred, k)[r] - getattr(tgt, k)[r]) ** 2).mean().item() for k in GROUPS)
               for r in range(3)]  # fmt: skip
    assert out.raw["param"].item() == pytest.approx(sum(per_row) / 3, rel=1e-5)
