"""Mixed-source batches: every loss term sees exactly the samples that carry its target (hand-computed)."""

from __future__ import annotations

import dataclasses
import math
import urllib.request
from pathlib import Path

import pytest
import torch

from msma.data.batch import FaceSample, collate_samples
from msma.data.mediapipe_mesh import FACE_OVAL, NUM_DENSE, NUM_MESH
from msma.face_model.camera import PerspectiveCamera
from msma.face_model.output import FaceOutput
from msma.face_model.params import GROUPS, CoeffLayout
from msma.fitting.correspondence import DenseCorrespondence
from msma.losses import DenseLandmarkLoss, FaceReconLoss, LossConfig
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


# --------------------------------------------------------------------------------------------- dense landmarks
def _correspondence(g: torch.Generator) -> DenseCorrespondence:
    """A correspondence of the 468 MediaPipe points onto the N test vertices (some residuals too large)."""
    bary = torch.rand(NUM_MESH, 3, generator=g) + 0.05
    residual = torch.rand(NUM_MESH, generator=g) * 8.0  # about a quarter above MAX_RESIDUAL_MM = 6
    return DenseCorrespondence(
        vertex_idx=torch.randint(0, N, (NUM_MESH, 3), generator=g).numpy(),
        bary=(bary / bary.sum(1, keepdim=True)).numpy(),
        residual_mm=residual.numpy(),
    )


def _dense_by_hand(
    corr: DenseCorrespondence, verts: torch.Tensor, normals: torch.Tensor, target: torch.Tensor
) -> float:
    """One row of the dense term, written out: the camera's projection, the fitter's oval rule, Geman-McClure."""
    idx, bary = torch.as_tensor(corr.vertex_idx), torch.as_tensor(corr.bary).double()
    p = (verts.double()[idx] * bary[..., None]).sum(1)  # (468, 3)
    f, c = 1015.0 * S / 224.0, S / 2.0 - 0.5
    u = c + f * p[:, 0] / (1000.0 - p[:, 2])
    v = c - f * p[:, 1] / (1000.0 - p[:, 2])
    n = (normals.double()[idx] * bary[..., None]).sum(1)
    nz = n[:, 2] / n.norm(dim=1)
    oval = torch.zeros(NUM_MESH, dtype=torch.bool)
    oval[list(FACE_OVAL)] = True
    w = torch.where(oval, ((nz - 0.3) / 0.3).clamp(0, 1), torch.ones_like(nz))
    w = w * (torch.as_tensor(corr.residual_mm) <= 6.0).double()
    t = target.double()[:NUM_MESH]
    finite = torch.isfinite(t[:, :2]).all(1)
    w = w * finite.double()
    r2 = ((u - t[:, 0]) ** 2 + (v - t[:, 1]) ** 2) * (224.0 / S) ** 2
    rho = torch.where(finite, r2 / (1 + r2 / 36.0), torch.zeros_like(r2))
    return float((w * rho).sum() / w.sum())


def test_dense_term_sees_only_the_rows_with_dense_targets() -> None:
    g = torch.Generator().manual_seed(3)
    samples = _samples(g)
    # Photos 1 and 2 carry MediaPipe's 478 points (row 2 after a flip: iris unknown); no other row has them.
    dense1 = torch.rand(NUM_DENSE, 3, generator=g) * (S - 1)
    dense2 = torch.rand(NUM_DENSE, 3, generator=g) * (S - 1)
    dense2[NUM_MESH:] = math.nan
    samples[1] = dataclasses.replace(samples[1], dense=dense1)
    samples[2] = dataclasses.replace(samples[2], dense=dense2)
    batch = collate_samples(samples)
    assert batch.dense is not None and batch.dense.shape == (5, NUM_DENSE, 3)
    assert batch.target_valid("dense").tolist() == [False, True, True, False, False]
    assert float(batch.dense[[0, 3, 4]].abs().sum()) == 0.0  # zero rows where absent

    corr = _correspondence(g)
    flat, face, render, skin_vertices = _prediction(batch.batch_size, g)
    # A face about 1 m in front of the camera, some of it facing away (oval weights between 0 and 1).
    verts = (torch.rand(5, N, 3, generator=g) - 0.5) * torch.tensor([60.0, 60.0, 40.0])
    verts.requires_grad_(True)
    face = dataclasses.replace(face, vertices=verts)
    dense = DenseLandmarkLoss(corr, PerspectiveCamera())
    cfg = LossConfig(use_identity=False, w_dense=0.5)
    out = FaceReconLoss(cfg, dense=dense)(batch, LAYOUT.split(flat), face, render, skin_vertices)
    by_hand = [_dense_by_hand(corr, verts[r].detach(), face.normals[r], batch.dense[r]) for r in (1, 2)]
    assert out.raw["dense"].item() == pytest.approx(sum(by_hand) / 2, rel=1e-5)  # normalised by 2 rows, not 5
    assert out.terms["dense"].item() == pytest.approx(0.5 * sum(by_hand) / 2, rel=1e-5)
    assert out.counts["dense"] == 2
    # Per source: only the photos carry it.
    assert "dense" in out.by_source[PHOTO] and "dense" not in out.by_source[SYN] and "dense" not in out.by_source[LP]
    assert out.by_source[PHOTO]["dense"].item() == pytest.approx(sum(by_hand) / 2, rel=1e-5)

    # Gradients reach only the vertices of the supervised rows (dense term alone).
    only_dense = FaceReconLoss(
        LossConfig(use_identity=False, w_color=0, w_lm=0, w_reg=0, w_gamma=0, w_reflc=0, w_param=0, w_dense=1.0),
        dense=dense,
    )
    only_dense(batch, LAYOUT.split(flat), face, render, skin_vertices).total.backward()
    assert verts.grad is not None
    assert (verts.grad.abs().sum(dim=(1, 2)) > 0).tolist() == [False, True, True, False, False]

    # A batch without any dense target: the term is 0 on the graph, no supervised row.
    plain = collate_samples([samples[0], samples[3]])
    assert plain.dense is None and not plain.target_valid("dense").any()
    _, face2, render2, _ = _prediction(2, g)
    out2 = FaceReconLoss(cfg, dense=dense)(plain, LAYOUT.split(flat[:2]), face2, render2, skin_vertices)
    assert out2.raw["dense"].item() == 0.0 and out2.counts["dense"] == 0


def test_dense_term_needs_its_correspondence() -> None:
    with pytest.raises(ValueError, match="w_dense > 0 needs the dense-landmark term"):
        FaceReconLoss(LossConfig(w_dense=1.0))
    # Off by default: no correspondence, no term, nothing changes.
    assert LossConfig().w_dense == 0.0 and FaceReconLoss().dense is None
    with pytest.raises(ValueError, match="must map 468 points"):
        DenseLandmarkLoss(DenseCorrespondence(torch.zeros(10, 3).long().numpy(), torch.zeros(10, 3).numpy(),
                                              torch.zeros(10).numpy()), PerspectiveCamera())  # fmt: skip


def test_dense_term_fails_at_setup_without_the_mediapipe_bundle(
    ict_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from msma.builders import build_loss
    from msma.face_model import assets

    monkeypatch.setenv("MSMA_ASSET_MIRROR", str(tmp_path / "empty_mirror"))
    monkeypatch.setenv("MSMA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MSMA_FACE_LANDMARKER", raising=False)

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("no network in this test")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(assets.AssetError, match=r"loss\.w_dense > 0.*face_landmarker\.task.*MSMA_ASSET_MIRROR"):
        build_loss(LossConfig(w_dense=1.0), ict_model)
    with pytest.raises(ValueError, match="needs the face model"):
        build_loss(LossConfig(w_dense=1.0))


def test_dense_term_on_the_real_correspondence(ict_model) -> None:  # type: ignore[no-untyped-def]
    """The ICT mean face, posed frontally, projected through the real correspondence onto itself: 0; moved by 2 px
    in x: the Geman-McClure value of 2 px at 224 on every used point; the face oval of a profile is left out."""
    dense = DenseLandmarkLoss.from_face_model(ict_model)
    size = 224
    face = ict_model(ict_model.layout.split(torch.zeros(1, ict_model.layout.total)), image_size=size)
    target = torch.cat([ict_model.camera.project(dense.surface_points(face.vertices), size),
                        torch.zeros(1, NUM_MESH, 1)], dim=-1)  # fmt: skip
    valid = torch.ones(1, dtype=torch.bool)
    assert dense(face.vertices, face.normals, target, valid, size).item() == pytest.approx(0.0, abs=1e-8)
    shifted = target.clone()
    shifted[..., 0] += 2.0
    assert dense(face.vertices, face.normals, shifted, valid, size).item() == pytest.approx(4 / (1 + 4 / 36), rel=1e-4)
    w_front = dense.point_weights(face.normals)[0]
    profile = ict_model.layout.split(torch.zeros(1, ict_model.layout.total))
    profile.angles[0, 1] = math.radians(80)
    w_side = dense.point_weights(ict_model(profile, image_size=size).normals)[0]
    oval = torch.tensor(FACE_OVAL)
    assert float(w_side[oval].min()) == 0.0 and float(w_front[oval].mean()) > float(w_side[oval].mean())
