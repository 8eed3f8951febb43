"""FaceReconLoss on the real pipeline: ICT face model -> torch rasteriser -> losses."""

from __future__ import annotations

import pytest
import torch

from msma.data.batch import FaceBatch
from msma.face_model.params import FaceParams
from msma.losses import FaceReconLoss, deep3d_loss_config, is_finite

S = 64


@pytest.fixture(scope="module")
def renderer():  # type: ignore[no-untyped-def]
    from msma.render.renderer import MeshRenderer

    return MeshRenderer(backend="torch")


def _gt_params(model, seed: int = 0) -> FaceParams:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    p = model.layout.split(0.3 * torch.randn(2, model.layout.total, generator=g))
    return p.replace(angles=0.3 * p.angles, sh=0.1 * p.sh, trans=torch.zeros(2, 3))


def test_data_terms_minimal_at_ground_truth_on_rendered_faces(ict_model, renderer) -> None:  # type: ignore[no-untyped-def]
    layout = ict_model.layout
    gt = _gt_params(ict_model)
    with torch.no_grad():
        face = ict_model(gt, S)
        target = renderer.render(face, ict_model.tri)
    batch = FaceBatch(
        image=target.image,
        landmarks=face.landmarks_2d,
        landmark_valid=torch.ones(2, dtype=torch.bool),
        crop_to_image=torch.eye(3).expand(2, 3, 3),
        params=layout.join(gt),
        params_valid=torch.ones(2, dtype=torch.bool),
        vertices=None,
        landmarks_3d=None,
        yaw=torch.zeros(2),
        skin_mask=None,  # skin GMM of the (rendered) input
    )
    results = {}
    losses = {"msma": FaceReconLoss(), "deep3d": FaceReconLoss(deep3d_loss_config())}
    for name, noise in (("gt", 0.0), ("perturbed", 0.2)):
        g = torch.Generator().manual_seed(1)
        flat = (layout.join(gt) + noise * torch.randn(2, layout.total, generator=g)).requires_grad_(True)
        params = layout.split(flat)
        pred_face = ict_model(params, S)
        pred_render = renderer.render(pred_face, ict_model.tri)
        for cfg_name, loss in losses.items():
            out = loss(batch, params, pred_face, pred_render, ict_model.skin_mask)
            assert is_finite(out)
            flat.grad = None
            out.total.backward(retain_graph=True)
            assert flat.grad is not None and torch.isfinite(flat.grad).all()
            if noise > 0:  # at the ground truth only the regulariser pulls (on id/exp/tex)
                for group in ("id", "exp", "angles", "trans"):
                    assert flat.grad[:, layout.slices[group]].abs().sum() > 0, group
            results[cfg_name, name] = out.raw
    for cfg_name in ("msma", "deep3d"):
        gt_raw, bad = results[cfg_name, "gt"], results[cfg_name, "perturbed"]
        assert gt_raw["color"].item() < 2e-3  # sqrt(eps) floor, up to antialiasing differences
        assert gt_raw["lm"].item() == pytest.approx(0.0, abs=1e-6)
        assert gt_raw["param"].item() == 0.0
        for term in ("color", "lm", "param"):
            assert bad[term].item() > 10 * max(gt_raw[term].item(), 1e-4), term
