"""The expression range of a face model (``FaceModel.in_range``): blendshape weights clamped to [0, 1], PCA
expressions untouched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from msma.face_model.bfm import load_bfm_arrays
from msma.face_model.model import FaceModel


def _random(layout: Any, n: int = 3) -> Any:
    g = torch.Generator().manual_seed(0)
    p = layout.zeros(n)
    return p.replace(
        id=torch.randn(n, layout.n_id, generator=g),
        exp=torch.randn(n, layout.n_exp, generator=g),  # about a third below 0, a sixth above 1
        tex=torch.randn(n, layout.n_tex, generator=g),
        angles=torch.randn(n, 3, generator=g) * 0.2,
    )


def test_blendshape_weights_are_clamped_to_the_unit_interval(ict_model: FaceModel) -> None:
    assert ict_model.exp_kind == "blendshape"
    p = _random(ict_model.layout)
    assert (p.exp < 0).any() and (p.exp > 1).any()
    q = ict_model.in_range(p)
    assert float(q.exp.min()) == 0.0 and float(q.exp.max()) == 1.0
    inside = (p.exp >= 0) & (p.exp <= 1)
    assert torch.equal(q.exp[inside], p.exp[inside])  # weights in range are untouched
    assert torch.equal(q.exp[p.exp < 0], torch.zeros_like(p.exp[p.exp < 0]))
    assert torch.equal(q.exp[p.exp > 1], torch.ones_like(p.exp[p.exp > 1]))
    for group in ("id", "tex", "angles", "sh", "trans"):
        assert torch.equal(getattr(q, group), getattr(p, group)), group
    # the decoded face is the clamped weights' face
    with torch.no_grad():
        torch.testing.assert_close(ict_model.shape(q.id, q.exp), ict_model.shape(p.id, p.exp.clamp(0, 1)))


def test_pca_expressions_are_left_as_they_are(synthetic_bfm_dir: Path) -> None:
    bfm = FaceModel(load_bfm_arrays(synthetic_bfm_dir))
    assert bfm.exp_kind == "pca"
    p = _random(bfm.layout)
    assert (p.exp < 0).any()
    assert torch.equal(bfm.in_range(p).exp, p.exp)
