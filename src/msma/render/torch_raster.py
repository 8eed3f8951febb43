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

Antialiasing: :meth:`TorchRasterizer.antialias` is the identity (documented in ``docs/renderer.md``); the
nvdiffrast backend implements nvdiffrast's analytic silhouette antialiasing.
"""

from __future__ import annotations

import torch
from torch import Tensor

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

    # ------------------------------------------------------------------ visibility (no autograd)
    @torch.no_grad()
    def visible_triangles(self, clip_pos: Tensor, tri: Tensor, resolution: tuple[int, int]) -> Tensor:
        """Per-pixel nearest triangle, without barycentrics.

        Args:
            clip_pos: (B, V, 4) clip-space positions.
            tri: (F, 3) int32/int64 vertex indices.
            resolution: (H, W).

        Returns:
            (B, H, W) int64 triangle id, -1 where no triangle covers the pixel centre.
        """
        _check_inputs(clip_pos, tri, resolution)
        height, width = int(resolution[0]), int(resolution[1])
        batch, n_faces = clip_pos.shape[0], tri.shape[0]
        device = clip_pos.device
        n_pix = height * width
        keys = torch.full((batch * n_pix,), _EMPTY_KEY, dtype=torch.int64, device=device)
        if n_faces == 0 or batch == 0:
            return torch.full((batch, height, width), -1, dtype=torch.int64, device=device)

        tri_l = tri.long()
        verts = clip_pos.detach().index_select(1, tri_l.reshape(-1)).view(batch, n_faces, 3, 4)
        px, py, pz = _to_pixels(verts, height, width)  # (B, F, 3) each
        x0, x1, x2 = px.unbind(-1)
        y0, y1, y2 = py.unbind(-1)
        # Twice the signed area; barycentric l_k = (a_k x + b_k y + c_k) / area for either winding.
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        finite = torch.isfinite(px).all(-1) & torch.isfinite(py).all(-1) & torch.isfinite(pz).all(-1)
        valid = (verts[..., 3] > 0).all(-1) & finite & (area != 0)
        # Bounding box of pixel centres (integers) inside the triangle's extent, clamped to the image.
        j_lo = torch.ceil(px.amin(-1)).clamp(0, width)
        j_hi = torch.floor(px.amax(-1)).clamp(-1, width - 1)
        i_lo = torch.ceil(py.amin(-1)).clamp(0, height)
        i_hi = torch.floor(py.amax(-1)).clamp(-1, height - 1)
        nx = (j_hi - j_lo + 1).clamp_min(0)
        ny = (i_hi - i_lo + 1).clamp_min(0)
        valid &= (nx > 0) & (ny > 0)

        sel = valid.reshape(-1).nonzero().squeeze(1)  # flat (b * F + f) of triangles with candidates
        if sel.numel() == 0:
            return torch.full((batch, height, width), -1, dtype=torch.int64, device=device)
        inv_area = 1.0 / area.reshape(-1).index_select(0, sel)

        def flat(t: Tensor) -> Tensor:
            return t.reshape(-1).index_select(0, sel)

        fx0, fx1, fx2, fy0, fy1, fy2 = (flat(t) for t in (x0, x1, x2, y0, y1, y2))
        # Edge functions: l0 ∝ (x1 - x) (y2 - y) - (x2 - x) (y1 - y) = a0 x + b0 y + c0, etc. (cyclic).
        a0, b0, c0 = fy1 - fy2, fx2 - fx1, fx1 * fy2 - fx2 * fy1
        a1, b1, c1 = fy2 - fy0, fx0 - fx2, fx2 * fy0 - fx0 * fy2
        a2, b2, c2 = fy0 - fy1, fx1 - fx0, fx0 * fy1 - fx1 * fy0
        z = pz.reshape(-1, 3).index_select(0, sel)
        coeff = torch.stack([a0, b0, c0, a1, b1, c1, a2, b2, c2], dim=1) * inv_area[:, None]
        # Screen-space depth plane z/w = sum_k l_k z_k.
        za = coeff[:, 0] * z[:, 0] + coeff[:, 3] * z[:, 1] + coeff[:, 6] * z[:, 2]
        zb = coeff[:, 1] * z[:, 0] + coeff[:, 4] * z[:, 1] + coeff[:, 7] * z[:, 2]
        zc = coeff[:, 2] * z[:, 0] + coeff[:, 5] * z[:, 1] + coeff[:, 8] * z[:, 2]
        coeff = torch.cat([coeff, torch.stack([za, zb, zc], dim=1)], dim=1)  # (T, 12)

        j0, i0 = flat(j_lo).long(), flat(i_lo).long()
        j1, i1 = flat(j_hi).long(), flat(i_hi).long()
        batch_idx = torch.div(sel, n_faces, rounding_mode="floor")
        face_idx = sel - batch_idx * n_faces
        pix_base = batch_idx * n_pix + i0 * width + j0  # flat index of each box's top-left pixel centre
        # Bucket triangles by power-of-two box size (sx, sy) >= (nx, ny): each bucket is a dense (T, sx * sy)
        # grid evaluated by broadcasting, with no per-candidate gathers; padding is masked by the box test.
        log_x = torch.frexp((flat(nx) - 1).to(torch.float64)).exponent.long()
        log_y = torch.frexp((flat(ny) - 1).to(torch.float64)).exponent.long()
        bucket = log_x * 64 + log_y
        order = torch.argsort(bucket)
        kinds, sizes = torch.unique_consecutive(bucket[order], return_counts=True)
        dtype = coeff.dtype
        offset = 0
        for kind, size in zip(kinds.tolist(), sizes.tolist(), strict=True):
            members = order[offset : offset + size]
            offset += size
            sx, sy = 1 << (kind // 64), 1 << (kind % 64)
            k = sx * sy
            grid = torch.arange(k, device=device)
            oy = torch.div(grid, sx, rounding_mode="floor")
            ox = grid - oy * sx
            oxf, oyf = ox.to(dtype), oy.to(dtype)
            step = max(1, self.max_candidates // k)
            for lo in range(0, size, step):
                t = members[lo : lo + step]
                c = coeff.index_select(0, t)  # (T, 12)
                xs = j0.index_select(0, t).to(dtype)[:, None]
                ys = i0.index_select(0, t).to(dtype)[:, None]
                # Affine functions evaluated at the box origin plus the grid offsets.
                base = c[:, 0::3, None] * xs[:, None] + c[:, 1::3, None] * ys[:, None] + c[:, 2::3, None]  # (T,4,1)
                vals = base + c[:, 0::3, None] * oxf + c[:, 1::3, None] * oyf  # (T, 4, K): l0, l1, l2, z/w
                zw = vals[:, 3]
                keep = (vals[:, :3] >= 0).all(dim=1) & (zw >= -1) & (zw <= 1)
                keep &= (ox <= (j1.index_select(0, t) - j0.index_select(0, t))[:, None]) & (
                    oy <= (i1.index_select(0, t) - i0.index_select(0, t))[:, None]
                )
                hit = keep.view(-1).nonzero().squeeze(1)
                if hit.numel() == 0:
                    continue
                row = torch.div(hit, k, rounding_mode="floor")
                col = hit - row * k
                tri_hit = t.index_select(0, row)
                pix = pix_base.index_select(0, tri_hit) + oy.index_select(0, col) * width + ox.index_select(0, col)
                # Depth in [0, 1] as float32 bits: monotonic as an integer for non-negative floats.
                depth01 = ((zw.reshape(-1).index_select(0, hit) + 1.0) * 0.5).to(torch.float32).clamp(0.0, 1.0)
                key = (depth01.view(torch.int32).to(torch.int64) << 32) | face_idx.index_select(0, tri_hit)
                keys.scatter_reduce_(0, pix, key, reduce="amin", include_self=True)

        covered = keys != _EMPTY_KEY
        ids = torch.where(covered, keys & 0xFFFFFFFF, torch.full_like(keys, -1))
        return ids.view(batch, height, width)

    # ------------------------------------------------------------------ protocol
    def rasterize(self, clip_pos: Tensor, tri: Tensor, resolution: tuple[int, int]) -> Tensor:
        """Rasterises triangles with nvdiffrast's conventions.

        Args:
            clip_pos: (B, V, 4) clip-space positions (any float dtype; the output has the same dtype).
            tri: (F, 3) int32/int64 vertex indices.
            resolution: (H, W).

        Returns:
            rast (B, H, W, 4): ``(u, v, z/w, triangle_id + 1)``, zeros on empty pixels. ``u``, ``v`` are the
            perspective-correct barycentrics of vertices 0 and 1 and carry gradients to ``clip_pos``.
        """
        ids = self.visible_triangles(clip_pos, tri, resolution)
        batch, height, width = ids.shape
        flat_ids = ids.reshape(-1)
        pix = (flat_ids >= 0).nonzero().squeeze(1)
        out = clip_pos.new_zeros(batch * height * width, 4)
        if pix.numel() == 0:
            # Keep the graph connected so backward through an empty image yields zero gradients.
            return (out + 0.0 * clip_pos.sum()).view(batch, height, width, 4)
        face = flat_ids.index_select(0, pix)
        n_pix = height * width
        b = torch.div(pix, n_pix, rounding_mode="floor")
        rem = pix - b * n_pix
        yi = torch.div(rem, width, rounding_mode="floor")
        xj = rem - yi * width
        n_vert = clip_pos.shape[1]
        vidx = (b[:, None] * n_vert + tri.long().index_select(0, face)).reshape(-1)
        verts = clip_pos.reshape(-1, 4).index_select(0, vidx).view(-1, 3, 4)  # (M, 3, 4), differentiable
        px, py, pz = _to_pixels(verts, height, width)
        xf = xj.to(px.dtype)[:, None]
        yf = yi.to(py.dtype)[:, None]
        dx = px - xf
        dy = py - yf
        # Screen-space barycentrics: l_k ∝ cross(p_{k+1} - p, p_{k+2} - p).
        e0 = dx[:, 1] * dy[:, 2] - dx[:, 2] * dy[:, 1]
        e1 = dx[:, 2] * dy[:, 0] - dx[:, 0] * dy[:, 2]
        e2 = dx[:, 0] * dy[:, 1] - dx[:, 1] * dy[:, 0]
        area = e0 + e1 + e2
        l0, l1, l2 = e0 / area, e1 / area, e2 / area
        zw = (l0 * pz[:, 0] + l1 * pz[:, 1] + l2 * pz[:, 2]).detach()
        # Perspective correction: b_k ∝ l_k / w_k.
        inv_w = 1.0 / verts[..., 3]
        q0, q1, q2 = l0 * inv_w[:, 0], l1 * inv_w[:, 1], l2 * inv_w[:, 2]
        denom = q0 + q1 + q2
        u = q0 / denom
        v = q1 / denom
        tid = (face + 1).to(clip_pos.dtype)
        vals = torch.stack([u, v, zw, tid], dim=1)
        out = out.index_copy(0, pix, vals)
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
        dtype = torch.promote_types(attr.dtype, rast.dtype)
        out = attr.new_zeros(batch * height * width, channels, dtype=dtype)
        if pix.numel() == 0:
            return (out + 0.0 * attr.sum() + 0.0 * rast.sum()).view(batch, height, width, channels)
        face = tid.index_select(0, pix) - 1
        if int(face.max()) >= tri.shape[0]:
            raise ValueError(f"interpolate: rast holds triangle id {int(face.max())} but tri has {tri.shape[0]}")
        b = torch.div(pix, height * width, rounding_mode="floor") if attr.shape[0] > 1 else torch.zeros_like(pix)
        n_vert = attr.shape[1]
        vidx = (b[:, None] * n_vert + tri.long().index_select(0, face)).reshape(-1)
        corners = attr.reshape(-1, channels).index_select(0, vidx).view(-1, 3, channels).to(dtype)  # (M, 3, C)
        uv = flat[:, :2].index_select(0, pix).to(dtype)
        u, v = uv[:, 0:1], uv[:, 1:2]
        vals = u * corners[:, 0] + v * corners[:, 1] + (1.0 - u - v) * corners[:, 2]
        out = out.index_copy(0, pix, vals)
        return out.view(batch, height, width, channels)

    def antialias(self, color: Tensor, rast: Tensor, clip_pos: Tensor, tri: Tensor) -> Tensor:
        """Identity: the torch backend does not antialias silhouettes (see ``docs/renderer.md``).

        Args:
            color: (B, H, W, C) image.
            rast: (B, H, W, 4) rasteriser output (unused).
            clip_pos: (B, V, 4) (unused).
            tri: (F, 3) (unused).

        Returns:
            ``color`` unchanged.
        """
        return color
