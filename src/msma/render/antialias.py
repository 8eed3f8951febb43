"""nvdiffrast's analytic silhouette antialiasing in plain PyTorch (the torch backend's ``antialias``).

:func:`triangle_neighbours` finds the triangle across each edge once per mesh; :func:`silhouette_antialias` blends
the pixels on either side of silhouette edges by the edge's crossing distance (Laine et al. 2020, sec. 4.3), so
gradients reach the vertices on silhouettes. Used by :meth:`msma.render.torch_raster.TorchRasterizer.antialias`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def triangle_neighbours(tri: Tensor) -> Tensor:
    """For each triangle edge ``k`` (vertices ``k``, ``k + 1``), the triangle across it.

    Args:
        tri: (F, 3) vertex indices.

    Returns:
        (F, 3) int64 neighbour triangle index, -1 on boundary edges. On non-manifold edges (three or more
        triangles) each triangle gets one of the others.
    """
    t = tri.long()
    n_faces = t.shape[0]
    a = t
    b = t.roll(-1, dims=1)
    lo, hi = torch.minimum(a, b).reshape(-1), torch.maximum(a, b).reshape(-1)
    n_vert = int(t.max()) + 1 if t.numel() else 1
    key = lo * n_vert + hi  # (3F,), edge slot e = 3 f + k
    order = torch.argsort(key)
    sorted_key = key.index_select(0, order)
    opp = torch.full((3 * n_faces,), -1, dtype=torch.int64, device=tri.device)
    same = (sorted_key[1:] == sorted_key[:-1]).nonzero().squeeze(1)
    first, second = order.index_select(0, same), order.index_select(0, same + 1)
    opp.index_copy_(0, second, torch.div(first, 3, rounding_mode="floor"))
    opp.index_copy_(0, first, torch.div(second, 3, rounding_mode="floor"))
    return opp.view(n_faces, 3)


def silhouette_antialias(
    color: Tensor, rast: Tensor, clip_pos: Tensor, tri: Tensor, neighbours: Tensor | None = None
) -> Tensor:
    """Analytic silhouette antialiasing in the manner of nvdiffrast, in plain PyTorch.

    Method of Laine et al. 2020 ("Modular Primitives for High-Performance Differentiable Rendering", sec. 4.3):
    for every horizontally or vertically adjacent pixel pair with different triangle ids, the nearer triangle
    (empty counts as infinitely far) is the front one. If one of its silhouette edges (a boundary edge, or one whose
    neighbour triangle faces the other way on screen) crosses the segment between the two pixel centres at distance
    ``d`` (pixels) from the front pixel's centre, the other pixel is blended towards the front colour by
    ``max(0, d - 0.5)`` and the front pixel towards the other colour by ``max(0, 0.5 - d)``. The crossing is a
    differentiable function of the edge's clip positions, so gradients reach silhouette vertices (which plain
    rasterisation cannot give); gradients also reach both colours.

    Args:
        color: (B, H, W, C) image to antialias.
        rast: (B, H, W, 4) rasteriser output for the same mesh.
        clip_pos: (B, V, 4) clip positions used for ``rast``.
        tri: (F, 3) vertex indices.
        neighbours: :func:`triangle_neighbours` of ``tri`` (computed when None).

    Returns:
        (B, H, W, C) antialiased image.
    """
    batch, height, width, channels = color.shape
    if neighbours is None:
        neighbours = triangle_neighbours(tri)
    n_faces, n_vert = tri.shape[0], clip_pos.shape[1]
    t_long = tri.long()
    # Screen-space facing of every triangle, then its silhouette edges: (B, F) sign, (B, F, 3) flags.
    with torch.no_grad():
        cd = clip_pos.detach()
        ndc = cd[..., :2] / cd[..., 3:4]
        c = ndc.index_select(1, t_long.t().reshape(-1)).view(batch, 3, n_faces, 2)
        area = (c[:, 1, :, 0] - c[:, 0, :, 0]) * (c[:, 2, :, 1] - c[:, 0, :, 1]) - (c[:, 2, :, 0] - c[:, 0, :, 0]) * (
            c[:, 1, :, 1] - c[:, 0, :, 1]
        )
        facing = torch.sign(area)  # (B, F)
        nb_facing = facing.index_select(1, neighbours.clamp_min(0).reshape(-1)).view(batch, n_faces, 3)
        sil = (neighbours < 0)[None] | (nb_facing != facing[..., None])  # (B, F, 3)
        # Per pixel: does its triangle have a silhouette edge? (slot 0 = empty pixel: no).
        has_sil = torch.cat([sil.new_zeros(batch, 1), sil.any(-1)], dim=1)  # (B, F + 1)
        ids = rast[..., 3].detach().long()  # (B, H, W), 0 = empty
        flag = has_sil.gather(1, ids.view(batch, -1)).view(batch, height, width)
        flat_pix = torch.arange(batch * height * width, device=color.device).view(batch, height, width)
        pa_list, pb_list, vert_list = [], [], []
        for is_vertical, (sa, sb) in enumerate(
            (
                ((slice(None), slice(None), slice(None, -1)), (slice(None), slice(None), slice(1, None))),
                ((slice(None), slice(None, -1), slice(None)), (slice(None), slice(1, None), slice(None))),
            )
        ):
            cand = (ids[sa] != ids[sb]) & (flag[sa] | flag[sb])
            pa_list.append(flat_pix[sa][cand])
            pb_list.append(flat_pix[sb][cand])
            vert_list.append(torch.full_like(pa_list[-1], is_vertical, dtype=torch.bool))
        pa_all, pb_all, vert = torch.cat(pa_list), torch.cat(pb_list), torch.cat(vert_list)
        if pa_all.numel() == 0:
            return color
        ids_f, zw_f = ids.view(-1), rast[..., 2].detach().reshape(-1)
        id_a, id_b = ids_f.index_select(0, pa_all), ids_f.index_select(0, pb_all)
        z_a, z_b = zw_f.index_select(0, pa_all), zw_f.index_select(0, pb_all)
        a_front = (id_b == 0) | ((id_a != 0) & (z_a < z_b))
        front_pix = torch.where(a_front, pa_all, pb_all)
        other_pix = torch.where(a_front, pb_all, pa_all)
        face = torch.where(a_front, id_a, id_b) - 1  # (P,)
        n_pix = height * width
        bidx = torch.div(front_pix, n_pix, rounding_mode="floor")
        edge_sil = sil.view(batch * n_faces, 3).index_select(0, bidx * n_faces + face)  # (P, 3)
        keep = edge_sil.any(1).nonzero().squeeze(1)
        front_pix, other_pix, face, bidx, vert, edge_sil = (
            t.index_select(0, keep) for t in (front_pix, other_pix, face, bidx, vert, edge_sil)
        )
        if face.numel() == 0:
            return color
        rem = front_pix - bidx * n_pix
        fy = torch.div(rem, width, rounding_mode="floor")
        fx = rem - fy * width
        orem = other_pix - bidx * n_pix
        oy = torch.div(orem, width, rounding_mode="floor")
        ox = orem - oy * width
        dtype = clip_pos.dtype
        step = torch.where(vert, oy - fy, ox - fx).to(dtype)  # +1 or -1 along the pair's axis
        along_c = torch.where(vert, fy, fx).to(dtype)  # front pixel centre along the axis
        cross_c = torch.where(vert, fx, fy).to(dtype)  # the pair's fixed coordinate

    # Corners of the front triangles in pixel coordinates, differentiable w.r.t. clip_pos: (P, 3, 4).
    vidx = (bidx[:, None] * n_vert + t_long.index_select(0, face)).reshape(-1)
    v = clip_pos.reshape(-1, 4).index_select(0, vidx).view(-1, 3, 4)
    w = v[..., 3]
    px = (v[..., 0] / w + 1.0) * (0.5 * width) - 0.5
    py = (v[..., 1] / w + 1.0) * (0.5 * height) - 0.5
    vert3 = vert[:, None].expand_as(px)
    pa = torch.where(vert3, py, px)  # along the pair's axis
    pc = torch.where(vert3, px, py)  # across it
    dists, oks = [], []
    for k in range(3):
        k1 = (k + 1) % 3
        denom = pc[:, k1] - pc[:, k]
        safe = torch.where(denom == 0, torch.ones_like(denom), denom)
        s = (cross_c - pc[:, k]) / safe
        d = (pa[:, k] + s * (pa[:, k1] - pa[:, k]) - along_c) * step  # from the front centre towards the other
        ok = edge_sil[:, k] & (denom != 0) & (s >= 0) & (s <= 1) & (d >= 0) & (d <= 1) & (w[:, k] > 0) & (w[:, k1] > 0)
        dists.append(d)
        oks.append(ok.detach())
    dist = torch.stack(dists, 1)  # (P, 3)
    ok_all = torch.stack(oks, 1)
    sel = ok_all.any(1).nonzero().squeeze(1)
    if sel.numel() == 0:
        return color
    first = ok_all.index_select(0, sel).to(torch.int8).argmax(1)
    d_sel = dist.index_select(0, sel).gather(1, first[:, None]).squeeze(1)
    col = color.reshape(-1, channels)
    f_pix, o_pix = front_pix.index_select(0, sel), other_pix.index_select(0, sel)
    c_front, c_other = col.index_select(0, f_pix), col.index_select(0, o_pix)
    w_other = (d_sel - 0.5).clamp_min(0.0)[:, None].to(col.dtype)
    w_front = (0.5 - d_sel).clamp_min(0.0)[:, None].to(col.dtype)
    delta = torch.cat([w_other * (c_front - c_other), w_front * (c_other - c_front)])
    out = col.index_add(0, torch.cat([o_pix, f_pix]), delta)
    return out.view(batch, height, width, channels)
