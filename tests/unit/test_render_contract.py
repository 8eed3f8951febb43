"""Rasteriser contract tests (nvdiffrast semantics), run against every backend present on this machine."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from msma.render import Rasterizer, TorchRasterizer, get_rasterizer
from msma.render.nvdiffrast_raster import NvdiffrastRasterizer, NvdiffrastUnavailableError, nvdiffrast_installed


def _backends() -> list[object]:
    params: list[object] = [pytest.param("torch", id="torch")]
    params.append(
        pytest.param(
            "nvdiffrast",
            id="nvdiffrast",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not nvdiffrast_installed(), reason="nvdiffrast not installed"),
            ],
        )
    )
    return params


@pytest.fixture(params=_backends())
def backend(request: pytest.FixtureRequest) -> tuple[Rasterizer, torch.device, torch.dtype]:
    """(rasteriser, device, the most precise dtype it supports)."""
    if request.param == "torch":
        return TorchRasterizer(), torch.device("cpu"), torch.float64
    dev = torch.device("cuda")
    return NvdiffrastRasterizer(dev), dev, torch.float32


def _pixel_ndc(height: int, width: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """ndc (x, y) of the pixel centres, each (H, W): nvdiffrast's ``(j + 0.5) / W * 2 - 1``."""
    ys = (torch.arange(height, dtype=dtype) + 0.5) / height * 2 - 1
    xs = (torch.arange(width, dtype=dtype) + 0.5) / width * 2 - 1
    return xs[None, :].expand(height, width), ys[:, None].expand(height, width)


def _screen_barycentrics(p: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
    """Screen-space barycentrics (..., 3) of points (qx, qy) w.r.t. the 2D triangle ``p`` (3, 2), float64."""
    (x0, y0), (x1, y1), (x2, y2) = p.tolist()
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    l0 = ((x1 - qx) * (y2 - qy) - (x2 - qx) * (y1 - qy)) / area
    l1 = ((x2 - qx) * (y0 - qy) - (x0 - qx) * (y2 - qy)) / area
    return torch.stack([l0, l1, 1 - l0 - l1], dim=-1)


# A triangle with no pixel centre within 3e-4 (barycentric) of its edges at 16x20 (checked in the test). Its
# vertices lie on nvdiffrast's subpixel grid (CudaRaster snaps vertices to 1/16 pixel, CR_SUBPIXEL_LOG2 = 4 in
# nvdiffrast/common/cudaraster/impl/Constants.hpp) and are exact in binary floating point, so the snapped triangle is
# the triangle itself and coverage is decided exactly by every backend (seen on an H200: with off-grid vertices,
# snapping moved the edges across pixel centres).
TRI_NDC = torch.tensor([[-0.71875, -0.625], [0.84375, -0.328125], [-0.125, 0.765625]], dtype=torch.float64)
H, W = 16, 20


def test_single_triangle_covers_exactly_the_pixel_centres_inside(backend):  # type: ignore[no-untyped-def]
    ras, dev, dtype = backend
    clip = torch.cat([TRI_NDC, torch.zeros(3, 1, dtype=torch.float64), torch.ones(3, 1, dtype=torch.float64)], 1)
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32, device=dev)
    qx, qy = _pixel_ndc(H, W)
    bary = _screen_barycentrics(TRI_NDC, qx, qy)
    assert bary.abs().min() > 3e-4, "test triangle must keep pixel centres away from its edges"
    expected = (bary >= 0).all(-1)
    assert 20 < int(expected.sum()) < H * W - 20
    for winding in ([0, 1, 2], [0, 2, 1]):  # back faces are rasterised like front faces
        t = tri[:, winding]
        rast = ras.rasterize(clip[None].to(dev, dtype), t, (H, W)).cpu()
        assert rast.shape == (1, H, W, 4)
        covered = rast[0, ..., 3] > 0
        assert torch.equal(covered, expected)
        assert torch.all(rast[0, ..., 3][covered] == 1)


def test_interpolated_attributes_equal_analytic_barycentrics(backend):  # type: ignore[no-untyped-def]
    ras, dev, dtype = backend
    clip = torch.cat([TRI_NDC, torch.tensor([[0.1], [-0.2], [0.3]], dtype=torch.float64), torch.ones(3, 1)], 1)
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32, device=dev)
    rast = ras.rasterize(clip[None].to(dev, dtype), tri, (H, W))
    attr = torch.tensor([[1.0, 0.0, 0.0, 5.0], [0.0, 1.0, 0.0, -2.0], [0.0, 0.0, 1.0, 7.0]], dtype=torch.float64)
    out = ras.interpolate(attr[None].to(dev, dtype), rast, tri).cpu().double()
    qx, qy = _pixel_ndc(H, W)
    bary = _screen_barycentrics(TRI_NDC, qx, qy)
    covered = rast[0, ..., 3].cpu() > 0
    tol = 1e-9 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(out[0][covered][:, :3], bary[covered], atol=tol, rtol=0)
    torch.testing.assert_close(out[0][covered][:, 3], bary[covered] @ attr[:, 3], atol=tol * 10, rtol=0)
    # rast (u, v) are the barycentrics of vertices 0 and 1; z/w is the interpolated ndc depth.
    torch.testing.assert_close(rast[0, ..., :2].cpu().double()[covered], bary[covered][:, :2], atol=tol, rtol=0)
    zw = bary[covered] @ torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    torch.testing.assert_close(rast[0, ..., 2].cpu().double()[covered], zw, atol=tol, rtol=0)


def test_perspective_correct_interpolation(backend):  # type: ignore[no-untyped-def]
    """Interpolating the clip coordinates themselves must reproduce each pixel centre's ndc position."""
    ras, dev, dtype = backend
    w = torch.tensor([1.0, 2.5, 4.0], dtype=torch.float64)
    clip = torch.cat([TRI_NDC * w[:, None], torch.zeros(3, 1, dtype=torch.float64), w[:, None]], 1)
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32, device=dev)
    rast = ras.rasterize(clip[None].to(dev, dtype), tri, (H, W))
    out = ras.interpolate(clip[None].to(dev, dtype), rast, tri).cpu().double()[0]
    covered = rast[0, ..., 3].cpu() > 0
    assert int(covered.sum()) > 20
    qx, qy = _pixel_ndc(H, W)
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close((out[..., 0] / out[..., 3])[covered], qx[covered], atol=tol, rtol=0)
    torch.testing.assert_close((out[..., 1] / out[..., 3])[covered], qy[covered], atol=tol, rtol=0)


def test_nearer_triangle_wins_and_empty_pixels_stay_empty(backend):  # type: ignore[no-untyped-def]
    ras, dev, dtype = backend
    near = torch.tensor([[-0.8, -0.8, -0.5, 1], [0.6, -0.7, -0.5, 1], [-0.1, 0.6, -0.5, 1]], dtype=torch.float64)
    far = torch.tensor([[-0.6, -0.5, 0.5, 1], [0.8, -0.4, 0.5, 1], [0.1, 0.8, 0.5, 1]], dtype=torch.float64)
    for order in ((near, far), (far, near)):
        clip = torch.cat(order)[None].to(dev, dtype)
        tri = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32, device=dev)
        rast = ras.rasterize(clip, tri, (H, W)).cpu()
        near_id = 1 if order[0] is near else 2
        qx, qy = _pixel_ndc(H, W)
        in_near = (_screen_barycentrics(near[:, :2], qx, qy) >= 0).all(-1)
        in_far = (_screen_barycentrics(far[:, :2], qx, qy) >= 0).all(-1)
        ids = rast[0, ..., 3]
        assert bool((in_near & in_far).any())
        assert torch.all(ids[in_near] == near_id)
        assert torch.all(ids[in_far & ~in_near] == 3 - near_id)
        empty = ~(in_near | in_far)
        assert torch.all(rast[0][empty] == 0)
        attr = torch.ones(1, 6, 2, device=dev, dtype=dtype)
        assert torch.all(ras.interpolate(attr, rast.to(dev), tri).cpu()[0][empty] == 0)


def test_clipping_and_nothing_to_draw(backend):  # type: ignore[no-untyped-def]
    ras, dev, dtype = backend
    base = torch.tensor([[-0.8, -0.8, 0.0, 1], [0.8, -0.8, 0.0, 1], [0.0, 0.8, 0.0, 1]], dtype=torch.float64)
    behind = base.clone()
    behind[:, 2] = -2.0  # z/w < -1: in front of the near plane
    beyond = base.clone()
    beyond[:, 2] = 1.5  # z/w > 1: behind the far plane
    negw = base.clone() * -1.0  # w < 0: behind the eye
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32, device=dev)
    for clip in (behind, beyond, negw):
        rast = ras.rasterize(clip[None].to(dev, dtype), tri, (H, W))
        assert torch.all(rast == 0)
    offscreen = base.clone()
    offscreen[:, 0] += 5.0
    assert torch.all(ras.rasterize(offscreen[None].to(dev, dtype), tri, (H, W)) == 0)


def _scene(dev: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Two overlapping perspective triangles and per-vertex attributes."""
    clip = torch.tensor(
        [
            [-0.70, -0.60, 0.20, 1.3],
            [0.90, -0.50, 0.10, 1.1],
            [-0.10, 0.95, 0.30, 1.6],
            [-0.95, 0.10, -0.30, 1.0],
            [0.40, 0.80, -0.20, 1.2],
            [0.20, -0.90, -0.10, 0.9],
        ],
        dtype=torch.float64,
    )
    attr = torch.tensor([[0.1, 0.9], [0.7, 0.2], [0.4, 0.5], [0.9, 0.3], [0.2, 0.8], [0.6, 0.6]], dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32)
    return clip[None].to(dev, dtype), attr[None].to(dev, dtype), tri.to(dev)


def test_gradients_match_finite_differences(backend):  # type: ignore[no-untyped-def]
    ras, dev, dtype = backend
    clip, attr, tri = _scene(dev, dtype)
    res = (12, 14)
    weights = torch.rand(1, *res, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(dev, dtype)

    eps = 1e-6 if dtype == torch.float64 else 1e-3
    tol = 1e-6 if dtype == torch.float64 else 2e-2
    # Pixels whose triangle stays the same under every +-eps perturbation of the clip coordinates. Without
    # antialiasing the loss jumps where a pixel changes triangle; in float64 no pixel does at eps 1e-6, but in
    # float32 nvdiffrast needs eps 1e-3, which moves its snapped vertices (1/16-pixel grid) and flips the coverage
    # of pixel centres close to an edge. The rasteriser's gradient is that of the interpolation, so it is compared
    # on the pixels that keep their triangle.
    with torch.no_grad():
        ids = ras.rasterize(clip, tri, res)[..., 3]
        stable = torch.ones_like(ids, dtype=torch.bool)
        flat = clip.reshape(-1)
        for k in range(flat.numel()):
            for sign in (1.0, -1.0):
                moved = flat.clone()
                moved[k] += sign * eps
                stable &= ras.rasterize(moved.view_as(clip), tri, res)[..., 3] == ids
    assert int(stable.sum()) > 0.8 * stable.numel()
    weights = weights * stable[..., None].to(dtype)

    def loss(c: Tensor, a: Tensor) -> Tensor:
        rast = ras.rasterize(c, tri, res)
        return (ras.interpolate(a, rast, tri) * weights).sum()

    c = clip.clone().requires_grad_(True)
    a = attr.clone().requires_grad_(True)
    loss(c, a).backward()
    assert c.grad is not None and a.grad is not None
    assert c.grad.abs().sum() > 0 and a.grad.abs().sum() > 0
    for name, base, grad in (("clip", clip, c.grad), ("attr", attr, a.grad)):
        fd = torch.zeros_like(base)
        flat = base.reshape(-1)
        for k in range(flat.numel()):
            plus, minus = flat.clone(), flat.clone()
            plus[k] += eps
            minus[k] -= eps
            args_p = (plus.view_as(base), attr) if name == "clip" else (clip, plus.view_as(base))
            args_m = (minus.view_as(base), attr) if name == "clip" else (clip, minus.view_as(base))
            with torch.no_grad():
                fd.view(-1)[k] = (loss(*args_p) - loss(*args_m)) / (2 * eps)
        scale = fd.abs().max().clamp_min(1.0)
        torch.testing.assert_close(grad / scale, fd / scale, atol=tol, rtol=0, msg=f"gradient w.r.t. {name}")


def test_batch_items_are_independent(backend):  # type: ignore[no-untyped-def]
    ras, dev, dtype = backend
    clip, attr, tri = _scene(dev, dtype)
    shifted = clip.clone()
    shifted[..., 0] += 0.3 * shifted[..., 3]
    both = torch.cat([clip, shifted])
    rast = ras.rasterize(both, tri, (H, W))
    torch.testing.assert_close(rast[0:1], ras.rasterize(clip, tri, (H, W)))
    torch.testing.assert_close(rast[1:2], ras.rasterize(shifted, tri, (H, W)))
    out = ras.interpolate(attr, rast, tri)  # attr (1, V, C) broadcasts over the batch
    assert out.shape == (2, H, W, 2)


def test_get_rasterizer() -> None:
    assert get_rasterizer("torch").name == "torch"
    assert get_rasterizer("auto", "cpu").name == "torch"
    assert isinstance(get_rasterizer("torch"), Rasterizer)
    with pytest.raises(ValueError, match="unknown renderer backend"):
        get_rasterizer("opengl")
    with pytest.raises(NvdiffrastUnavailableError, match="CUDA"):
        get_rasterizer("nvdiffrast", "cpu")


def test_bad_input_is_reported() -> None:
    ras = TorchRasterizer()
    clip = torch.zeros(1, 3, 4)
    with pytest.raises(ValueError, match="clip_pos must be"):
        ras.rasterize(torch.zeros(3, 4), torch.tensor([[0, 1, 2]]), (4, 4))
    with pytest.raises(ValueError, match="tri indices"):
        ras.rasterize(clip, torch.tensor([[0, 1, 3]]), (4, 4))
    with pytest.raises(ValueError, match="resolution"):
        ras.rasterize(clip, torch.tensor([[0, 1, 2]]), (0, 4))
