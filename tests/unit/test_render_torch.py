"""The torch rasteriser against a slow per-pixel reference, chunking, dtype and device behaviour."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from msma.render import TorchRasterizer

EDGE_TOL = 1e-5
DEPTH_TOL = 1e-6


def _reference(clip: Tensor, tri: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Brute force, one pixel at a time, in float64.

    Returns:
        ids (H, W) int64 (-1 empty), bary (H, W, 3) perspective-correct barycentrics of the winner and an
        ``ambiguous`` (H, W) bool mask: a pixel centre within EDGE_TOL of some triangle's edge, or two fragments
        within DEPTH_TOL in depth (ties the contract leaves open).
    """
    v = clip.double()[tri.long()]  # (F, 3, 4)
    ok_w = (v[..., 3] > 0).all(-1)
    ndc = v[..., :3] / v[..., 3:4]
    px = (ndc[..., 0] + 1) * width / 2 - 0.5
    py = (ndc[..., 1] + 1) * height / 2 - 0.5
    ids = torch.full((height, width), -1, dtype=torch.int64)
    bary = torch.zeros(height, width, 3, dtype=torch.float64)
    ambiguous = torch.zeros(height, width, dtype=torch.bool)
    for i in range(height):
        for j in range(width):
            x0, x1, x2 = px.unbind(-1)
            y0, y1, y2 = py.unbind(-1)
            area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
            l0 = ((x1 - j) * (y2 - i) - (x2 - j) * (y1 - i)) / area
            l1 = ((x2 - j) * (y0 - i) - (x0 - j) * (y2 - i)) / area
            l2 = 1 - l0 - l1
            lam = torch.stack([l0, l1, l2], -1)
            zw = (lam * ndc[..., 2]).sum(-1)
            valid = ok_w & (area != 0)
            inside = valid & (lam >= 0).all(-1) & (zw >= -1) & (zw <= 1)
            near_edge = valid & (lam.amin(-1).abs() < EDGE_TOL) & (zw >= -1 - 1e-6) & (zw <= 1 + 1e-6)
            if bool(near_edge.any()):
                ambiguous[i, j] = True
            if not bool(inside.any()):
                continue
            depth = torch.where(inside, zw, torch.full_like(zw, float("inf")))
            order = torch.argsort(depth)
            best = int(order[0])
            if int(inside.sum()) > 1 and float(depth[order[1]] - depth[best]) < DEPTH_TOL:
                ambiguous[i, j] = True
            ids[i, j] = best
            q = lam[best] / v[best, :, 3]
            bary[i, j] = q / q.sum()
    return ids, bary, ambiguous


def _random_mesh(seed: int, n_vert: int = 40, n_tri: int = 60) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = 0.6 + 1.4 * torch.rand(n_vert, generator=g)
    ndc_xy = torch.rand(n_vert, 2, generator=g) * 2.4 - 1.2
    ndc_z = torch.rand(n_vert, generator=g) * 2.4 - 1.2  # some fragments fall outside [-1, 1] and are clipped
    clip = torch.cat([ndc_xy * w[:, None], (ndc_z * w)[:, None], w[:, None]], 1)
    clip[0, 3] = -0.5  # one vertex behind the eye: its triangles are dropped
    tri = torch.stack([torch.randperm(n_vert, generator=g)[:3] for _ in range(n_tri)]).to(torch.int32)
    return clip, tri


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_bruteforce_reference(seed: int) -> None:
    clip, tri = _random_mesh(seed)
    height, width = 18, 23
    ref_ids, ref_bary, ambiguous = _reference(clip, tri, height, width)
    rast = TorchRasterizer().rasterize(clip[None], tri, (height, width))[0]
    ids = rast[..., 3].long() - 1
    assert int((ref_ids >= 0).sum()) > 100, "scene must cover a good part of the image"
    assert float(ambiguous.float().mean()) < 0.05
    agree = ids == ref_ids
    assert bool(agree[~ambiguous].all()), f"{int((~agree & ~ambiguous).sum())} unambiguous pixels differ"
    same = agree & (ref_ids >= 0)
    torch.testing.assert_close(rast[..., 0][same].double(), ref_bary[..., 0][same], atol=2e-5, rtol=0)
    torch.testing.assert_close(rast[..., 1][same].double(), ref_bary[..., 1][same], atol=2e-5, rtol=0)
    # Exact depth ties go to the lower triangle id (deterministic).
    dup = torch.cat([tri, tri])  # an identical copy: bit-identical depths
    ids_dup = TorchRasterizer().rasterize(clip[None], dup, (height, width))[0, ..., 3].long() - 1
    assert torch.equal(ids_dup, ids)


def test_chunking_does_not_change_the_result() -> None:
    clip, tri = _random_mesh(5, n_vert=60, n_tri=200)
    big = TorchRasterizer().rasterize(clip[None].repeat(2, 1, 1), tri, (40, 50))
    small = TorchRasterizer(max_candidates=64).rasterize(clip[None].repeat(2, 1, 1), tri, (40, 50))
    assert torch.equal(big, small)


def test_huge_triangle_and_large_image() -> None:
    """A triangle far larger than the image is clipped to it without enumerating its whole box."""
    clip = torch.tensor([[[-50.0, -50.0, 0.0, 1.0], [50.0, -50.0, 0.0, 1.0], [0.0, 80.0, 0.0, 1.0]]])
    rast = TorchRasterizer().rasterize(clip, torch.tensor([[0, 1, 2]]), (300, 200))
    assert torch.all(rast[..., 3] == 1)
    torch.testing.assert_close(rast[..., :2].sum(-1).max(), torch.tensor(1.0), atol=1.0, rtol=0)


def test_dtype_and_empty_inputs() -> None:
    ras = TorchRasterizer()
    clip, tri = _random_mesh(3)
    r64 = ras.rasterize(clip[None].double(), tri, (10, 12))
    assert r64.dtype == torch.float64
    r32 = ras.rasterize(clip[None], tri, (10, 12))
    assert r32.dtype == torch.float32
    empty = ras.rasterize(clip[None], torch.zeros(0, 3, dtype=torch.int32), (10, 12))
    assert empty.shape == (1, 10, 12, 4) and torch.all(empty == 0)
    c = clip[None].clone().requires_grad_(True)
    far = c + torch.tensor([100.0, 0.0, 0.0, 0.0])  # everything off screen: zero gradient, no error
    out = ras.interpolate(torch.ones(1, clip.shape[0], 1), ras.rasterize(far, tri, (10, 12)), tri)
    out.sum().backward()
    assert c.grad is not None and torch.all(c.grad == 0)


def test_ids_keep_exact_values_for_large_meshes() -> None:
    """Triangle ids beyond 2^16 survive the float32 rast channel and the 32-bit key packing."""
    n = 70_000
    clip = torch.tensor([[-0.9, -0.9, 0.5, 1.0], [0.9, -0.9, 0.5, 1.0], [0.0, 0.9, 0.5, 1.0]])
    clip = torch.cat([clip, torch.tensor([[5.0, 5.0, 0.0, 1.0]]).repeat(3, 1)])
    tri = torch.tensor([[3, 4, 5]], dtype=torch.int32).repeat(n, 1)
    tri[-1] = torch.tensor([0, 1, 2])
    rast = TorchRasterizer().rasterize(clip[None], tri, (8, 8))
    assert int(rast[..., 3].max()) == n


def test_triangle_neighbours() -> None:
    from msma.render.antialias import triangle_neighbours

    tri = torch.tensor([[0, 1, 2], [2, 1, 3], [3, 1, 4]])
    expected = torch.tensor([[-1, 1, -1], [0, 2, -1], [1, -1, -1]])
    assert torch.equal(triangle_neighbours(tri), expected)


def _aa_scene() -> tuple[Tensor, Tensor]:
    """A quad of two triangles (shared diagonal, same facing) in perspective, float64."""
    clip = torch.tensor(
        [[-0.61, -0.53, 0.1, 1.0], [0.67, -0.41, 0.2, 1.2], [0.07, 0.71, 0.0, 0.9], [-0.57, 0.63, 0.1, 1.1]],
        dtype=torch.float64,
    )
    tri = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)
    return clip[None], tri


def test_antialias_blends_only_across_silhouettes() -> None:
    ras = TorchRasterizer()
    clip, tri = _aa_scene()
    res = (20, 24)
    rast = ras.rasterize(clip, tri, res)
    img = ras.interpolate(torch.ones(1, 4, 1, dtype=torch.float64), rast, tri)  # constant colour 1 on the quad
    aa = ras.antialias(img, rast, clip, tri)
    covered = rast[0, ..., 3] > 0
    # Pixels away from the outline are unchanged, including along the interior diagonal (not a silhouette).
    pad = torch.nn.functional.pad(covered[None, None].double(), (1, 1, 1, 1))[0, 0]
    interior = covered & (pad[:-2, 1:-1] > 0) & (pad[2:, 1:-1] > 0) & (pad[1:-1, :-2] > 0) & (pad[1:-1, 2:] > 0)
    assert bool((rast[0, ..., 3][interior] == 1).any() and (rast[0, ..., 3][interior] == 2).any())
    torch.testing.assert_close(aa[0, ..., 0][interior], img[0, ..., 0][interior])
    assert float(aa.min()) >= 0.0 and float(aa.max()) <= 1.0
    changed = (aa - img).abs()[0, ..., 0] > 1e-9
    assert int((changed & ~covered).sum()) > 5 and int((changed & covered).sum()) > 5
    far = ~covered & (pad[:-2, 1:-1] == 0) & (pad[2:, 1:-1] == 0) & (pad[1:-1, :-2] == 0) & (pad[1:-1, 2:] == 0)
    assert torch.all(aa[0, ..., 0][far] == 0)


def test_antialias_gradients_match_finite_differences() -> None:
    """Constant colour: without antialiasing positions get no gradient; with it, silhouette vertices do."""
    ras = TorchRasterizer()
    clip, tri = _aa_scene()
    res = (16, 18)
    ones = torch.ones(1, 4, 1, dtype=torch.float64)
    weights = torch.rand(1, *res, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def loss(c: Tensor) -> Tensor:
        rast = ras.rasterize(c, tri, res)
        return (ras.antialias(ras.interpolate(ones, rast, tri), rast, c, tri) * weights).sum()

    c = clip.clone().requires_grad_(True)
    loss(c).backward()
    assert c.grad is not None and float(c.grad.abs().sum()) > 1.0
    eps = 1e-6
    fd = torch.zeros_like(clip)
    for k in range(clip.numel()):
        plus, minus = clip.clone().view(-1), clip.clone().view(-1)
        plus[k] += eps
        minus[k] -= eps
        with torch.no_grad():
            fd.view(-1)[k] = (loss(plus.view_as(clip)) - loss(minus.view_as(clip))) / (2 * eps)
    torch.testing.assert_close(c.grad, fd, atol=1e-6, rtol=1e-6)


def test_renders_under_inference_mode(ict_model) -> None:  # type: ignore[no-untyped-def]
    """Lightning's validate/test run under torch.inference_mode: the renderer works there and agrees."""
    from msma.render.renderer import MeshRenderer

    renderer = MeshRenderer("torch")
    ref = renderer.render(ict_model(ict_model.layout.zeros(1), image_size=32), ict_model.tri).image.detach()
    with torch.inference_mode():
        got = renderer.render(ict_model(ict_model.layout.zeros(1), image_size=32), ict_model.tri).image
    assert got.shape == (1, 3, 32, 32) and float(got.sum()) > 0
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
