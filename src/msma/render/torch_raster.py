"""Pure-PyTorch z-buffer rasteriser with nvdiffrast's semantics (CPU reference; runs on any device).

Algorithm (fully vectorised, no Python loop over triangles or pixels):

1. Every triangle of every batch item is projected to pixel coordinates (``x = (ndc_x + 1) W / 2 - 0.5``, pixel
   centres at integers, row ``i`` at ``ndc_y = (i + 0.5) / H * 2 - 1`` as in nvdiffrast) and its edge functions
   and screen-space depth plane are precomputed as 12 affine coefficients.
2. The pixel centres inside each triangle's bounding box are enumerated as a flat list of candidates
   (``repeat_interleave`` over the per-triangle box sizes). Large triangles are handled by splitting the triangle
   list into chunks whose candidate count stays under ``max_candidates``, so memory is bounded whatever the
   triangle sizes; depth results accumulate across chunks.
3. Candidates whose centre passes the barycentric test and whose fragment depth ``z/w`` lies in ``[-1, 1]``
   compete per pixel through one ``scatter_reduce(amin)`` on a 64-bit key ``(depth bits << 32) | triangle id``:
   the nearest fragment wins, exact depth ties go to the lower triangle id (deterministic).
4. For the winning (pixel, triangle) pairs only, the perspective-correct barycentrics ``(u, v)`` are recomputed
   from ``clip_pos`` with autograd, so gradients flow to the vertex positions exactly like nvdiffrast's
   ``rasterize`` (through u, v; the ``z/w`` channel is returned without gradient, as in nvdiffrast), and to the
   attributes and ``rast`` in :meth:`TorchRasterizer.interpolate`.

Clipping: triangles with any vertex at ``w <= 0`` (behind the eye plane) are dropped whole; fragments whose
interpolated ``z/w`` falls outside ``[-1, 1]`` (in front of the near or behind the far plane) are discarded
per pixel, which equals clipping against those planes for triangles in front of the camera. nvdiffrast
clips triangles crossing ``w = 0`` instead of dropping them; with the face camera (near plane at 500 mm) no face
triangle gets there.

Back faces: like nvdiffrast, both windings are rasterised (no culling); the barycentrics are signed-area ratios, so
they are the same for either winding. Degenerate (zero-area) triangles cover nothing.

Antialiasing: :meth:`TorchRasterizer.antialias` implements nvdiffrast's analytic silhouette antialiasing
(:func:`msma.render.antialias.silhouette_antialias`), so gradients also reach vertices on silhouettes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from msma.render.antialias import silhouette_antialias, triangle_neighbours

#: Default bound on the bounding-box candidates processed at once (64-bit keys and 12 float coefficients each).
DEFAULT_MAX_CANDIDATES = 1 << 22

_EMPTY_KEY = torch.iinfo(torch.int64).max


def _check_inputs(clip_pos: Tensor, tri: Tensor, resolution: tuple[int, int]) -> None:
    if clip_pos.ndim != 3 or clip_pos.shape[-1] != 4:
        raise ValueError(f"rasterize: clip_pos must be (B, V, 4), got {tuple(clip_pos.shape)}")
    if not clip_pos.is_floating_point():
        raise ValueError(f"rasterize: clip_pos must be floating point, got {clip_pos.dtype}")
    if tri.ndim != 2 or tri.shape[-1] != 3:
        raise ValueError(f"rasterize: tri must be (F, 3), got {tuple(tri.shape)}")
    if tri.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"rasterize: tri must be int32 or int64, got {tri.dtype}")
    if len(resolution) != 2 or int(resolution[0]) <= 0 or int(resolution[1]) <= 0:
        raise ValueError(f"rasterize: resolution must be (H, W) > 0, got {resolution}")
    if tri.numel() and (int(tri.min()) < 0 or int(tri.max()) >= clip_pos.shape[1]):
        raise ValueError(
            f"rasterize: tri indices must lie in [0, {clip_pos.shape[1]}), got [{int(tri.min())}, {int(tri.max())}]"
        )


def _to_pixels(clip: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Clip (..., 4) -> pixel x, pixel y (pixel-index units, centres at integers) and ndc z, each (...)."""
    inv_w = 1.0 / clip[..., 3]
    x = (clip[..., 0] * inv_w + 1.0) * (0.5 * width) - 0.5
    y = (clip[..., 1] * inv_w + 1.0) * (0.5 * height) - 0.5
    return x, y, clip[..., 2] * inv_w


class _Barycentrics(torch.autograd.Function):
    """Perspective-correct barycentrics of the winning triangles, with the analytic gradient w.r.t. clip x, y, w.

    With ``h_k = (x_k, y_k, w_k)`` the homogeneous 2D clip position of vertex ``k`` and ``r = (ndc_x, ndc_y, 1)``
    the pixel centre, the perspective-correct barycentrics are ``b_k = D_k / (D_0 + D_1 + D_2)`` with
    ``D_k = det(r, h_{k+1}, h_{k+2})`` (Cramer's rule on ``sum_k b_k h_k ∝ r``; homogeneous rasterisation, Olano &
    Greer 1997). Subtracting ``r``'s multiples of the w column, ``D_k = X_{k+1} Y_{k+2} - X_{k+2} Y_{k+1}`` with
    ``X = x - ndc_x w`` and ``Y = y - ndc_y w``, whose derivatives are used in ``backward``. As in nvdiffrast the
    z/w channel carries no gradient.
    """

    @staticmethod
    def forward(ctx: Any, clip_flat: Tensor, vidx: Tensor, ray: Tensor, pix: Tensor, tid: Tensor, n_out: int) -> Tensor:
        verts = clip_flat.index_select(0, vidx.reshape(-1)).view(-1, 3, 4)  # (M, 3, 4)
        rx, ry = ray[:, 0:1], ray[:, 1:2]
        w = verts[..., 3]
        big_x = verts[..., 0] - rx * w  # (M, 3)
        big_y = verts[..., 1] - ry * w
        x0, x1, x2 = big_x.unbind(1)
        y0, y1, y2 = big_y.unbind(1)
        d0 = x1 * y2 - x2 * y1
        d1 = x2 * y0 - x0 * y2
        d2 = x0 * y1 - x1 * y0
        total = d0 + d1 + d2
        u = d0 / total
        v = d1 / total
        z, w0, w1, w2 = verts[..., 2], w[:, 0], w[:, 1], w[:, 2]
        b2 = 1.0 - u - v
        zw = (u * z[:, 0] + v * z[:, 1] + b2 * z[:, 2]) / (u * w0 + v * w1 + b2 * w2)
        vals = torch.stack([u, v, zw, tid], dim=1)
        out = clip_flat.new_zeros(n_out, 4).index_copy_(0, pix, vals)
        ctx.save_for_backward(vidx, ray, pix, big_x, big_y, u, v, total)
        ctx.n_clip = clip_flat.shape[0]
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        vidx, ray, pix, big_x, big_y, u, v, total = ctx.saved_tensors
        g = grad_out.index_select(0, pix)
        gu, gv = g[:, 0], g[:, 1]
        inv = 1.0 / total
        common = (gu * u + gv * v) * inv
        gd = (gu * inv - common, gv * inv - common, -common)  # dL/dD_k
        x = big_x.unbind(1)
        y = big_y.unbind(1)
        g_clip = big_x.new_empty(big_x.shape[0], 3, 4)
        rx, ry = ray[:, 0], ray[:, 1]
        for j in range(3):
            j1, j2 = (j + 1) % 3, (j + 2) % 3
            gx = gd[j2] * y[j1] - gd[j1] * y[j2]
            gy = gd[j1] * x[j2] - gd[j2] * x[j1]
            g_clip[:, j, 0] = gx
            g_clip[:, j, 1] = gy
            g_clip[:, j, 2] = 0.0
            g_clip[:, j, 3] = -(rx * gx + ry * gy)
        grad = g_clip.new_zeros(ctx.n_clip, 4).index_add_(0, vidx.reshape(-1), g_clip.view(-1, 4))
        return grad, None, None, None, None, None


class _Interpolate(torch.autograd.Function):
    """``out[p] = u attr[v0] + v attr[v1] + (1 - u - v) attr[v2]`` on covered pixels, zero elsewhere."""

    @staticmethod
    def forward(
        ctx: Any, attr_flat: Tensor, uv: Tensor, vidx: Tensor, pix: Tensor, n_out: int, rast_shape: tuple[int, ...]
    ) -> Tensor:
        channels = attr_flat.shape[1]
        corners = attr_flat.index_select(0, vidx.reshape(-1)).view(-1, 3, channels)
        u, v = uv[:, 0:1], uv[:, 1:2]
        c2 = corners[:, 2]
        vals = c2 + u * (corners[:, 0] - c2) + v * (corners[:, 1] - c2)
        out = attr_flat.new_zeros(n_out, channels).index_copy_(0, pix, vals)
        ctx.save_for_backward(corners, uv, vidx, pix)
        ctx.n_attr = attr_flat.shape[0]
        ctx.rast_shape = rast_shape
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        corners, uv, vidx, pix = ctx.saved_tensors
        g = grad_out.index_select(0, pix)  # (M, C)
        grad_attr = grad_uv = None
        if ctx.needs_input_grad[0]:
            u, v = uv[:, 0:1], uv[:, 1:2]
            weights = torch.stack([u, v, 1.0 - u - v], dim=1)  # (M, 3, 1)
            src = (weights * g[:, None, :]).reshape(-1, g.shape[1])
            grad_attr = g.new_zeros(ctx.n_attr, g.shape[1]).index_add_(0, vidx.reshape(-1), src)
        if ctx.needs_input_grad[1]:
            c2 = corners[:, 2]
            grad_uv = torch.stack([((corners[:, 0] - c2) * g).sum(1), ((corners[:, 1] - c2) * g).sum(1)], dim=1)
        return grad_attr, grad_uv, None, None, None, None


class TorchRasterizer:
    """nvdiffrast-compatible ``rasterize`` / ``interpolate`` / ``antialias`` in plain PyTorch.

    Args:
        max_candidates: upper bound on the bounding-box pixel candidates held in memory at once.
    """

    name = "torch"

    def __init__(self, max_candidates: int = DEFAULT_MAX_CANDIDATES) -> None:
        if max_candidates < 1:
            raise ValueError(f"TorchRasterizer: max_candidates must be >= 1, got {max_candidates}")
        self.max_candidates = int(max_candidates)
        self._neighbours: Tensor | None = None
        self._neighbours_key: tuple[int, int, tuple[int, ...], int, str] | None = None
        self._neighbours_tri: Tensor | None = None

    # ------------------------------------------------------------------ visibility (no autograd)
    @torch.no_grad()
    def _nearest_keys(self, clip_pos: Tensor, tri: Tensor, resolution: tuple[int, int]) -> Tensor:
        """(B * H * W,) int64 depth-test keys ``(depth bits << 32) | triangle id``; ``_EMPTY_KEY`` where empty."""
        _check_inputs(clip_pos, tri, resolution)
        height, width = int(resolution[0]), int(resolution[1])
        batch, n_faces = clip_pos.shape[0], tri.shape[0]
        device = clip_pos.device
        n_pix = height * width
        keys = torch.full((batch * n_pix,), _EMPTY_KEY, dtype=torch.int64, device=device)
        if n_faces == 0 or batch == 0:
            return keys

        # Per-vertex pixel coordinates once, then gathered per triangle corner: (B, V, 4) -> (B, 3, F, 4).
        clip_d = clip_pos.detach()
        px_v, py_v, pz_v = _to_pixels(clip_d, height, width)
        screen = torch.stack([px_v, py_v, pz_v, clip_d[..., 3]], dim=-1)
        corners = screen.index_select(1, tri.long().t().reshape(-1)).view(batch, 3, n_faces, 4)
        (x0, y0, z0, w0), (x1, y1, z1, w1), (x2, y2, z2, w2) = (c.unbind(-1) for c in corners.unbind(1))
        # Bounding box of the pixel centres (integers) the triangle can cover, clamped to the image.
        j_lo = torch.ceil(torch.minimum(torch.minimum(x0, x1), x2)).clamp_(0, width)
        i_lo = torch.ceil(torch.minimum(torch.minimum(y0, y1), y2)).clamp_(0, height)
        nx = torch.floor(torch.maximum(torch.maximum(x0, x1), x2)).clamp_(-1, width - 1) - j_lo + 1
        ny = torch.floor(torch.maximum(torch.maximum(y0, y1), y2)).clamp_(-1, height - 1) - i_lo + 1
        # Twice the signed area; l_k = edge_k(x, y) / area is the same for either winding (no culling).
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        # NaN bounds (w = 0) fail these comparisons, so such triangles are dropped too.
        valid = (w0 > 0) & (w1 > 0) & (w2 > 0) & (nx > 0) & (ny > 0) & (area != 0)
        sel = valid.view(-1).nonzero().squeeze(1)  # flat (b * F + f) of triangles with candidate pixels
        if sel.numel() == 0:
            return keys

        def pick(t: Tensor) -> Tensor:
            return t.reshape(-1).index_select(0, sel)

        x0, x1, x2, y0, y1, y2, z0, z1, z2, area = (pick(t) for t in (x0, x1, x2, y0, y1, y2, z0, z1, z2, area))
        inv_area = 1.0 / area
        j0, i0 = pick(j_lo).long(), pick(i_lo).long()
        nx_s, ny_s = pick(nx).long(), pick(ny).long()
        # Edge functions of vertices 0 and 1 as affine functions of the pixel centre (x, y):
        # l0 = ((x1 - x)(y2 - y) - (x2 - x)(y1 - y)) / area,  l1 = ((x2 - x)(y0 - y) - (x0 - x)(y2 - y)) / area,
        # l2 = 1 - l0 - l1; and the screen-space depth plane z/w = l0 z0 + l1 z1 + l2 z2.
        a0, b0, c0 = (y1 - y2) * inv_area, (x2 - x1) * inv_area, (x1 * y2 - x2 * y1) * inv_area
        a1, b1, c1 = (y2 - y0) * inv_area, (x0 - x2) * inv_area, (x2 * y0 - x0 * y2) * inv_area
        za, zb, zc = (
            a0 * (z0 - z2) + a1 * (z1 - z2),
            b0 * (z0 - z2) + b1 * (z1 - z2),
            c0 * (z0 - z2) + c1 * (z1 - z2) + z2,
        )
        # The depth plane is affine: in-range vertices keep every fragment in range.
        needs_depth_test = (z0 < -1) | (z0 > 1) | (z1 < -1) | (z1 > 1) | (z2 < -1) | (z2 > 1)
        dtype = a0.dtype
        # Edge coefficients for a box whose origin is the top-left candidate: l = slope . (ox, oy) + offset.
        x_org, y_org = j0.to(dtype), i0.to(dtype)
        off0, off1 = a0 * x_org + b0 * y_org + c0, a1 * x_org + b1 * y_org + c1
        # (T, [l0, l1, l2], [d/dx, d/dy]) and (T, 3); l2 = 1 - l0 - l1 as its own affine function.
        slopes = torch.stack([a0, b0, a1, b1, -(a0 + a1), -(b0 + b1)], 1).view(-1, 3, 2)
        offsets = torch.stack([off0, off1, 1.0 - off0 - off1], 1)
        int_view = torch.int64 if dtype == torch.float64 else torch.int32
        batch_idx = torch.div(sel, n_faces, rounding_mode="floor")
        face_idx = sel - batch_idx * n_faces

        # Bucket triangles by box size (sx, sy) >= (nx, ny) (exact up to 4, then powers of two): each bucket is a
        # dense (T, sx * sy) grid evaluated with one matrix product, no per-candidate gathers. Padding cells lie
        # outside the triangle's box, hence outside the triangle; boxes are shifted to stay inside the image where
        # they fit.
        def size_class(n: Tensor) -> Tensor:
            pow2 = torch.ones_like(n) << torch.frexp((n - 1).to(torch.float32)).exponent.long()
            return torch.where(n <= 4, n, pow2)

        bucket = size_class(nx_s) * 65536 + size_class(ny_s)
        order = torch.argsort(bucket)
        kinds, sizes = torch.unique_consecutive(bucket.index_select(0, order), return_counts=True)
        start = 0
        for kind, size in zip(kinds.tolist(), sizes.tolist(), strict=True):
            members = order[start : start + size]
            start += size
            sx, sy = kind // 65536, kind % 65536
            cells = sx * sy
            grid = torch.arange(cells, device=device)
            oy = torch.div(grid, sx, rounding_mode="floor")
            ox = grid - oy * sx
            # Shift the box left/up so the padded grid stays in the image (only when it fits at all).
            shift_x = (j0.index_select(0, members) + sx - width).clamp_min(0) if sx <= width else None
            shift_y = (i0.index_select(0, members) + sy - height).clamp_min(0) if sy <= height else None
            offs = torch.stack([ox, oy]).to(dtype)  # (2, cells)
            step = max(1, self.max_candidates // cells)
            for lo in range(0, size, step):
                t = members[lo : lo + step]
                sl = slopes.index_select(0, t)  # (n, 3, 2)
                off = offsets.index_select(0, t)  # (n, 3)
                jj0 = j0.index_select(0, t)
                ii0 = i0.index_select(0, t)
                if shift_x is not None:
                    dx = shift_x[lo : lo + step]
                    off = off - sl[:, :, 0] * dx[:, None].to(dtype)
                    jj0 = jj0 - dx
                if shift_y is not None:
                    dy = shift_y[lo : lo + step]
                    off = off - sl[:, :, 1] * dy[:, None].to(dtype)
                    ii0 = ii0 - dy
                lam = torch.addmm(off.reshape(-1, 1), sl.reshape(-1, 2), offs).view(-1, 3, cells)  # (n, 3, cells)
                # Inside iff no barycentric has its sign bit set (l >= 0, +0 included) -- one OR per row.
                bits = lam.view(int_view)
                inside = (bits[:, 0] | bits[:, 1] | bits[:, 2]) >= 0
                if shift_x is None:
                    inside &= ox < (width - jj0)[:, None]
                if shift_y is None:
                    inside &= oy < (height - ii0)[:, None]
                hit = inside.view(-1).nonzero().squeeze(1)
                if hit.numel() == 0:
                    continue
                row = torch.div(hit, cells, rounding_mode="floor")
                col = hit - row * cells
                tri_hit = t.index_select(0, row)
                xs = jj0.index_select(0, row) + ox.index_select(0, col)
                ys = ii0.index_select(0, row) + oy.index_select(0, col)
                zw = za.index_select(0, tri_hit) * xs.to(dtype) + zb.index_select(0, tri_hit) * ys.to(dtype)
                zw = zw + zc.index_select(0, tri_hit)
                pix = batch_idx.index_select(0, tri_hit) * n_pix + ys * width + xs
                if bool(needs_depth_test.index_select(0, tri_hit).any()):
                    ok = ((zw >= -1) & (zw <= 1)).nonzero().squeeze(1)
                    zw, pix, tri_hit = zw.index_select(0, ok), pix.index_select(0, ok), tri_hit.index_select(0, ok)
                # Depth in [0, 1] as float32 bits: monotonic as an integer for non-negative floats.
                depth01 = ((zw + 1.0) * 0.5).to(torch.float32).clamp(0.0, 1.0)
                key = (depth01.view(torch.int32).to(torch.int64) << 32) | face_idx.index_select(0, tri_hit)
                keys.scatter_reduce_(0, pix, key, reduce="amin", include_self=True)

        return keys

    # ------------------------------------------------------------------ protocol
    def rasterize(self, clip_pos: Tensor, tri: Tensor, resolution: tuple[int, int]) -> Tensor:
        """Rasterises triangles with nvdiffrast's conventions.

        Args:
            clip_pos: (B, V, 4) clip-space positions (any float dtype; the output has the same dtype).
            tri: (F, 3) int32/int64 vertex indices.
            resolution: (H, W).

        Returns:
            rast (B, H, W, 4): ``(u, v, z/w, triangle_id + 1)``, zeros on empty pixels. ``u``, ``v`` are the
            perspective-correct barycentrics of vertices 0 and 1 and carry gradients to ``clip_pos`` (x, y, w).
        """
        keys = self._nearest_keys(clip_pos, tri, resolution)
        batch, height, width = clip_pos.shape[0], int(resolution[0]), int(resolution[1])
        pix = (keys != _EMPTY_KEY).nonzero().squeeze(1)
        face = keys.index_select(0, pix) & 0xFFFFFFFF
        n_pix = height * width
        b = torch.div(pix, n_pix, rounding_mode="floor")
        rem = pix - b * n_pix
        yi = torch.div(rem, width, rounding_mode="floor")
        xj = rem - yi * width
        dtype = clip_pos.dtype
        ray = torch.stack(
            [
                (xj.to(dtype) + 0.5) * (2.0 / width) - 1.0,
                (yi.to(dtype) + 0.5) * (2.0 / height) - 1.0,
                torch.ones(pix.shape[0], dtype=dtype, device=pix.device),
            ],
            dim=1,
        )
        n_vert = clip_pos.shape[1]
        vidx = b[:, None] * n_vert + tri.long().index_select(0, face)  # (M, 3) rows of clip_pos.view(-1, 4)
        tid = (face + 1).to(dtype)
        out = _Barycentrics.apply(clip_pos.reshape(-1, 4), vidx, ray, pix, tid, batch * n_pix)
        return out.view(batch, height, width, 4)

    def interpolate(self, attr: Tensor, rast: Tensor, tri: Tensor) -> Tensor:
        """Interpolates per-vertex attributes with the rasteriser's barycentrics.

        Args:
            attr: (B, V, C) or (1, V, C) per-vertex attributes (broadcast over the batch when 1).
            rast: (B, H, W, 4) from :meth:`rasterize`.
            tri: (F, 3) vertex indices.

        Returns:
            (B, H, W, C) interpolated attributes, zero on empty pixels; differentiable w.r.t. ``attr`` and the
            ``u``, ``v`` channels of ``rast``.
        """
        if attr.ndim != 3:
            raise ValueError(f"interpolate: attr must be (B, V, C), got {tuple(attr.shape)}")
        if rast.ndim != 4 or rast.shape[-1] != 4:
            raise ValueError(f"interpolate: rast must be (B, H, W, 4), got {tuple(rast.shape)}")
        batch, height, width, _ = rast.shape
        if attr.shape[0] not in (1, batch):
            raise ValueError(f"interpolate: attr batch {attr.shape[0]} does not match rast batch {batch}")
        channels = attr.shape[-1]
        flat = rast.reshape(-1, 4)
        tid = flat[:, 3].detach().long()
        pix = (tid > 0).nonzero().squeeze(1)
        face = tid.index_select(0, pix) - 1
        if face.numel() and int(face.max()) >= tri.shape[0]:
            raise ValueError(f"interpolate: rast holds triangle id {int(face.max())} but tri has {tri.shape[0]}")
        dtype = torch.promote_types(attr.dtype, rast.dtype)
        n_vert = attr.shape[1]
        tri_px = tri.long().index_select(0, face)
        if attr.shape[0] > 1:
            vidx = torch.div(pix, height * width, rounding_mode="floor")[:, None] * n_vert + tri_px
        else:
            vidx = tri_px
        uv = flat[:, :2].index_select(0, pix).to(dtype)
        out = _Interpolate.apply(
            attr.to(dtype).reshape(-1, channels), uv, vidx, pix, batch * height * width, tuple(rast.shape)
        )
        return out.view(batch, height, width, channels)

    def antialias(self, color: Tensor, rast: Tensor, clip_pos: Tensor, tri: Tensor) -> Tensor:
        """Analytic silhouette antialiasing (:func:`silhouette_antialias`); the edge adjacency is cached per ``tri``.

        Args:
            color: (B, H, W, C) image.
            rast: (B, H, W, 4) rasteriser output.
            clip_pos: (B, V, 4) clip positions used for ``rast``.
            tri: (F, 3) vertex indices.

        Returns:
            (B, H, W, C) antialiased ``color``; differentiable w.r.t. ``color`` and ``clip_pos``.
        """
        # Inference tensors (created under torch.inference_mode) have no version counter; they cannot change
        # in place either.
        version = -1 if tri.is_inference() else tri._version
        key = (id(tri), tri.data_ptr(), tuple(tri.shape), version, str(tri.device))
        if self._neighbours is None or self._neighbours_key != key or self._neighbours_tri is not tri:
            self._neighbours = triangle_neighbours(tri)
            self._neighbours_key, self._neighbours_tri = key, tri
        return silhouette_antialias(color, rast, clip_pos, tri, self._neighbours)
