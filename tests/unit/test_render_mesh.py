"""MeshRenderer on the ICT face: outputs, conventions (upright image, landmark alignment), gradients."""

from __future__ import annotations

import pytest
import torch

from msma.render import MeshRenderer, RenderOutput

SIZE = 96


@pytest.fixture(scope="module")
def face_and_tri(ict_model):  # type: ignore[no-untyped-def]
    params = ict_model.layout.zeros(2)
    params = type(params)(
        id=params.id,
        exp=params.exp,
        tex=params.tex,
        angles=torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.4, -0.05]]),
        sh=params.sh,
        trans=torch.tensor([[0.0, 0.0, 0.0], [8.0, -5.0, 20.0]]),
    )
    with torch.no_grad():
        face = ict_model(params, image_size=SIZE)
    return face, ict_model.tri


def test_render_outputs(face_and_tri) -> None:  # type: ignore[no-untyped-def]
    face, tri = face_and_tri
    out = MeshRenderer(backend="torch", antialias=False).render(face, tri)
    assert isinstance(out, RenderOutput)
    assert out.image.shape == (2, 3, SIZE, SIZE)
    assert out.mask.shape == out.depth.shape == (2, 1, SIZE, SIZE)
    assert out.normals.shape == (2, 3, SIZE, SIZE)
    assert out.rast.shape == (2, SIZE, SIZE, 4)
    cov = out.mask > 0
    assert torch.equal(cov[:, 0], out.rast[..., 3] > 0)
    assert 0.15 < float(cov.float().mean()) < 0.9
    # Empty pixels are zero everywhere.
    for t in (out.image, out.depth, out.normals):
        assert torch.all(t.masked_fill(cov, 0) == 0)
    # Depth: distance from the camera (1000 mm) to the face surface, mm.
    d = out.depth[cov]
    assert 850.0 < float(d.min()) and float(d.max()) < 1100.0
    # Unit normals, facing the camera on average.
    n = out.normals.permute(0, 2, 3, 1)[cov[:, 0]]
    torch.testing.assert_close(n.norm(dim=-1), torch.ones(n.shape[0]), atol=1e-4, rtol=0)
    assert float(n[:, 2].mean()) > 0.5
    assert float(out.image.min()) >= 0.0 and float(out.image[:, :, cov[0, 0]].mean()) > 0.05
    # With antialiasing the mask is 1 inside, fractional on the outline, and geometry outputs are unchanged.
    soft = MeshRenderer(backend="torch", antialias=True).render(face, tri)
    assert torch.all(soft.mask[cov] > 0) and float(soft.mask.max()) <= 1.0 and float(soft.mask.min()) >= 0.0
    assert torch.equal(soft.depth, out.depth) and torch.equal(soft.rast, out.rast)


def test_image_is_upright_and_aligned_with_projected_landmarks(face_and_tri) -> None:  # type: ignore[no-untyped-def]
    """The surface point seen at each projected landmark's pixel is that landmark (same pixel convention)."""
    face, tri = face_and_tri
    ren = MeshRenderer(backend="torch")
    out = ren(face.clip, tri, face.vertices, resolution=SIZE)  # "colour" = posed position, mm
    for b in range(2):
        # Nose tip (30), eye inner corners (39, 42), mouth corners (48, 54), upper lip (51): visible, interior.
        for k in (30, 39, 42, 48, 51, 54):
            x, y = face.landmarks_2d[b, k].tolist()
            i, j = round(y), round(x)
            assert out.mask[b, 0, i, j] == 1, f"landmark {k} pixel ({i}, {j}) not covered"
            seen = out.image[b, :, i, j]
            # One pixel is ~1000 / (1015 * SIZE / 224) = 2.3 mm at the face; allow a pixel of rounding.
            assert float((seen[:2] - face.landmarks_3d[b, k, :2]).norm()) < 3.5
    # Upright: the chin (8) is below the nose (30) in the image, brows (19, 24) above it.
    lm = face.landmarks_2d[0]
    assert lm[8, 1] > lm[30, 1] > lm[19, 1]


def test_gradients_reach_geometry_and_colour(face_and_tri) -> None:  # type: ignore[no-untyped-def]
    face, tri = face_and_tri
    clip = face.clip[:1].clone().requires_grad_(True)
    color = face.color[:1].clone().requires_grad_(True)
    normals = face.normals[:1].clone().requires_grad_(True)
    out = MeshRenderer(backend="torch")(clip, tri, color, normals, resolution=64)
    target = torch.rand_like(out.image)
    ((out.image - target).square().sum() + out.depth.sum() + out.normals.sum()).backward()
    for t in (clip, color, normals):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_options_and_errors(face_and_tri) -> None:  # type: ignore[no-untyped-def]
    face, tri = face_and_tri
    aa = MeshRenderer(backend="torch", antialias=True)(face.clip, tri, face.color[:1], None, resolution=(40, 56))
    plain = MeshRenderer(backend="torch", antialias=False)(face.clip, tri, face.color, None, resolution=(40, 56))
    assert aa.image.shape == (2, 3, 40, 56)
    # Antialiasing softens the outline only: fractional mask values there, binary mask without it.
    assert set(plain.mask.unique().tolist()) == {0.0, 1.0}
    soft = (aa.mask > 0) & (aa.mask < 1)
    assert int(soft.sum()) > 20
    cov = plain.mask[0, 0] > 0
    interior = cov.clone()
    interior[1:-1, 1:-1] &= cov[:-2, 1:-1] & cov[2:, 1:-1] & cov[1:-1, :-2] & cov[1:-1, 2:]
    frac_changed = ((aa.image[0] - plain.image[0]).abs().amax(0) > 1e-6)[interior].float().mean()
    assert float(frac_changed) < 0.02  # interior silhouettes only (eyelids, nose wings)
    assert torch.all(plain.normals == 0)
    assert MeshRenderer(backend="auto").rasterizer("cpu").name == "torch"
    with pytest.raises(ValueError, match="unknown backend"):
        MeshRenderer(backend="opengl")
    with pytest.raises(ValueError, match="colors must be"):
        MeshRenderer(backend="torch")(face.clip, tri, face.color[:, :10], resolution=32)
    with pytest.raises(ValueError, match="clip must be"):
        MeshRenderer(backend="torch")(face.clip[0], tri, face.color, resolution=32)
