"""The coefficients of a face's mirror image (``msma.face_model.mirror``) against geometric oracles: the mirrored
mesh, the mirrored landmarks in the crop, the mirrored shading; and the flip average of every group."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import trimesh

from msma.data.landmark_index import MIRROR_68
from msma.face_model import FaceModel
from msma.face_model.landmark_convention import mirror_vertices
from msma.face_model.mirror import SH_MIRROR_SIGNS, CoefficientMirror
from msma.face_model.model import FaceModelArrays
from msma.face_model.params import FaceParams
from msma.face_model.shading import sh_basis
from msma.pipeline import predict_params

SIZE = 64
FLIP_X = np.array([-1.0, 1.0, 1.0])


def _random_params(layout: Any, n: int, seed: int) -> FaceParams:
    g = torch.Generator().manual_seed(seed)
    p = layout.split(0.5 * torch.randn(n, layout.total, generator=g))
    return p.replace(angles=0.3 * torch.randn(n, 3, generator=g), trans=5.0 * torch.randn(n, 3, generator=g))


def _symmetric_sphere(pairs: int = 3, skew: float = 0.0) -> FaceModelArrays:
    """An icosphere (symmetric about x = 0) whose identity, expression and albedo bases hold random fields *and their
    mirror images* (so the mirror is exactly in the span), plus one symmetric field; ``skew`` shifts every vertex
    by a random amount to break the symmetry."""
    rng = np.random.default_rng(0)
    ico = trimesh.creation.icosphere(subdivisions=2, radius=100.0)
    v = np.asarray(ico.vertices, dtype=np.float64)
    f = np.asarray(ico.faces, dtype=np.int64)
    n = len(v)
    from scipy.spatial import cKDTree

    partner = cKDTree(v).query(v * FLIP_X)[1]

    def basis(negate_x: bool) -> np.ndarray:
        sign = FLIP_X if negate_x else np.ones(3)
        cols = []
        for _ in range(pairs):
            a = rng.normal(size=(n, 3))
            cols += [a, a[partner] * sign]
        b = rng.normal(size=(n, 3))
        cols.append(b + b[partner] * sign)  # a symmetric field: its own mirror
        return np.stack(cols, axis=-1).astype(np.float32)

    k = 2 * pairs + 1
    mean = v + skew * rng.normal(size=v.shape)
    return FaceModelArrays(
        name="sphere",
        mean_shape=mean.astype(np.float32),
        id_basis=basis(True),
        exp_basis=basis(True),
        albedo_mean=np.full((n, 3), 0.5, np.float32),
        albedo_basis=0.05 * basis(False),
        tri=f,
        mesh_tri=f,
        landmark_idx=np.arange(68, dtype=np.int64),
        skin_mask=np.ones(n, np.float32),
        id_std=np.ones(k, np.float32),
        tex_std=np.ones(k, np.float32),
        exp_kind="pca",
        exp_names=tuple(f"e{i}" for i in range(k)),
        tex_names=tuple(f"t{i}" for i in range(k)),
        uv=None,
    )


def test_exact_on_a_basis_closed_under_mirroring() -> None:
    """Oracle: the mirrored mesh M S(c)[m] and the albedo at the partner vertices, computed directly."""
    model = FaceModel(_symmetric_sphere())
    mirror = CoefficientMirror.from_face_model(model)
    assert mirror is not None and mirror.matched == 1.0
    assert max(mirror.residual.values()) < 1e-6
    p = _random_params(model.layout, 3, seed=1)
    m = mirror(p)
    partner = torch.as_tensor(mirror_vertices(model.mean_shape.double().numpy(), tol_mm=0.01))
    assert bool((partner >= 0).all())
    with torch.no_grad():
        shape, shape_m = model.shape(p.id, p.exp), model.shape(m.id, m.exp)
        torch.testing.assert_close(shape_m, shape[:, partner] * torch.tensor([-1.0, 1.0, 1.0]), atol=1e-3, rtol=0)
        torch.testing.assert_close(model.albedo(m.tex), model.albedo(p.tex)[:, partner], atol=1e-5, rtol=0)
    # linear: zero coefficients (the mean face) map to zero, the pose and light aside
    zero = mirror(model.layout.zeros(2))
    for g in ("id", "exp", "tex", "sh", "angles", "trans"):
        assert torch.equal(getattr(zero, g), torch.zeros_like(getattr(zero, g)))
    # an involution
    twice = mirror(m)
    for g, t in p.items():
        torch.testing.assert_close(getattr(twice, g), t, atol=1e-5, rtol=1e-5)


def test_ict_mirror_projects_the_mirrored_landmarks_and_shading(ict_model: FaceModel) -> None:
    """Oracle: the landmarks of the mirrored coefficients are the posed landmarks mirrored about the crop's vertical
    centre line (x -> S - 1 - x) and re-indexed left <-> right; the shaded colours are the partner vertices'."""
    mirror = CoefficientMirror.from_face_model(ict_model)
    assert mirror is not None and mirror.matched > 0.99
    # ICT-FaceKit: left/right blendshapes are mirror pairs, the identity PCA nearly symmetric (measured 0.4 / 1.9 %)
    assert mirror.residual["id"] < 0.01 and mirror.residual["exp"] < 0.03 and mirror.residual["tex"] < 0.01
    p = _random_params(ict_model.layout, 4, seed=2)
    p = p.replace(exp=p.exp.abs().clamp(max=1.0))
    with torch.no_grad():
        out, out_m = ict_model(p, image_size=SIZE), ict_model(mirror(p), image_size=SIZE)
    lm, lm_m = out.landmarks_2d.double().numpy(), out_m.landmarks_2d.double().numpy()
    want = lm[:, list(MIRROR_68)].copy()
    want[..., 0] = SIZE - 1 - want[..., 0]
    err = np.abs(lm_m - want).max()
    assert err < 0.25, err  # pixels at 64 px; the face spans ~40 px
    # A wrong identity or expression map (e.g. the identity, unmirrored) is far off:
    wrong = ict_model(mirror(p).replace(id=p.id, exp=p.exp), image_size=SIZE).landmarks_2d.double().numpy()
    assert np.abs(wrong - want).max() > 4 * err
    # Shaded colours (albedo x SH light at the posed normals): the mirrored face's at each vertex are the
    # original's at its partner.
    partner = torch.as_tensor(mirror_vertices(ict_model.mean_shape.double().numpy(), tol_mm=0.5))
    keep = partner >= 0
    diff = (out_m.color[:, keep] - out.color[:, partner[keep]]).abs()
    unmirrored_light = ict_model(mirror(p).replace(sh=p.sh), image_size=SIZE).color
    diff_wrong = (unmirrored_light[:, keep] - out.color[:, partner[keep]]).abs()
    assert float(diff.median()) < 0.01 < float(diff_wrong.median()), (float(diff.median()), float(diff_wrong.median()))


def test_sh_signs_mirror_the_irradiance() -> None:
    """Oracle: irradiance of the mirrored light at the mirrored normal equals the original at the normal."""
    g = torch.Generator().manual_seed(3)
    normals = torch.nn.functional.normalize(torch.randn(500, 3, generator=g, dtype=torch.float64), dim=-1)
    gamma = torch.randn(9, generator=g, dtype=torch.float64)
    signs = torch.tensor(SH_MIRROR_SIGNS, dtype=torch.float64)
    flipped = normals * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(sh_basis(flipped) @ (gamma * signs), sh_basis(normals) @ gamma)
    assert not torch.allclose(sh_basis(flipped) @ gamma, sh_basis(normals) @ gamma)


def test_an_asymmetric_mesh_has_no_mirror() -> None:
    model = FaceModel(_symmetric_sphere(skew=2.0))
    assert CoefficientMirror.from_face_model(model) is None


class _MirroredTwin(torch.nn.Module):
    """Answers ``a`` for the unflipped image and ``b`` for the flipped one (told apart by a marked pixel)."""

    def __init__(self, a: FaceParams, b: FaceParams) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, image: torch.Tensor) -> FaceParams:
        rows = [self.a if float(img[0, 0, 0]) > 0.5 else self.b for img in image]
        return FaceParams(**{g: torch.cat([getattr(r, g) for r in rows]) for g, _ in self.a.items()})


def test_flip_average_of_every_group(ict_model: FaceModel) -> None:
    """An encoder answering p for the crop and mirror(q) for its mirror image gets (p + q) / 2 in every group; one
    without a mirror only the pose is averaged."""
    mirror = CoefficientMirror.from_face_model(ict_model)
    assert mirror is not None
    p, q = _random_params(ict_model.layout, 1, seed=4), _random_params(ict_model.layout, 1, seed=5)
    image = torch.zeros(1, 3, 8, 8)
    image[0, :, 0, 0] = 1.0  # marked at the top left; the flip moves the mark to the top right
    got = predict_params(_MirroredTwin(p, mirror(q)), image, flip_average=True, mirror=mirror)
    back = mirror(mirror(q))  # q up to the least-squares residual of the identity / expression / albedo maps
    for g, t in p.items():
        torch.testing.assert_close(getattr(got, g), 0.5 * (t + getattr(back, g)), atol=1e-5, rtol=1e-5)
    # ... and the averaged face is the average of the two faces (shape within 0.1 mm, pose exact)
    with torch.no_grad():
        shape = ict_model.shape(got.id, got.exp)
        want = 0.5 * (ict_model.shape(p.id, p.exp) + ict_model.shape(q.id, q.exp))
    assert float((shape - want).norm(dim=-1).max()) < 0.1
    torch.testing.assert_close(got.angles, 0.5 * (p.angles + q.angles), atol=1e-6, rtol=0)
    torch.testing.assert_close(got.sh, 0.5 * (p.sh + q.sh), atol=1e-6, rtol=0)
    pose_only = predict_params(_MirroredTwin(p, mirror(q)), image, flip_average=True)
    torch.testing.assert_close(pose_only.id, p.id)
    torch.testing.assert_close(pose_only.angles, 0.5 * (p.angles + q.angles))
