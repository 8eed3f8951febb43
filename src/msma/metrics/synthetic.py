"""Errors against synthetic ground truth: per-vertex distances in mm and coefficient errors.

They are accumulated over a split by :class:`msma.evaluation.heldout.HeldOutMetrics` (with the landmark NME).

Synthetic faces come from the same face model as the prediction, so vertices correspond one to one and no
surface search is needed: the per-vertex error is the mean Euclidean distance between corresponding vertices,
either as posed in the camera frame (``raw``: geometry + pose + translation) or after a per-face rigid
(optionally similarity) least-squares alignment (``aligned``: shape only; Umeyama 1991).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from msma.face_model.params import FaceParams

Alignment = Literal["none", "rigid", "similarity"]


def align_vertices(pred: Tensor, gt: Tensor, with_scale: bool = False, weights: Tensor | None = None) -> Tensor:
    """Per-face least-squares rigid / similarity alignment of ``pred`` onto ``gt`` (batched Umeyama).

    Args:
        pred: (B, N, 3) predicted vertices in mm.
        gt: (B, N, 3) corresponding ground-truth vertices in mm.
        with_scale: also fit an isotropic scale.
        weights: optional (N,) non-negative vertex weights (e.g. a face-region mask).

    Returns:
        (B, N, 3) ``pred`` moved onto ``gt``.
    """
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} must both be (B, N, 3)")
    p = pred.double()
    g = gt.double()
    w = torch.ones(p.shape[1], dtype=p.dtype, device=p.device) if weights is None else weights.to(p).reshape(-1)
    w = (w / w.sum())[None, :, None]
    mu_p = (p * w).sum(dim=1, keepdim=True)
    mu_g = (g * w).sum(dim=1, keepdim=True)
    p0, g0 = p - mu_p, g - mu_g
    cov = (g0 * w).transpose(1, 2) @ p0  # (B, 3, 3)
    u, sig, vh = torch.linalg.svd(cov)
    sign = torch.sign(torch.linalg.det(u) * torch.linalg.det(vh))
    d = torch.ones_like(sig)
    d[:, 2] = torch.where(sign == 0, torch.ones_like(sign), sign)
    rot = u @ torch.diag_embed(d) @ vh
    scale = torch.ones(p.shape[0], 1, 1, dtype=p.dtype, device=p.device)
    if with_scale:
        var_p = ((p0**2).sum(dim=-1, keepdim=True) * w).sum(dim=(1, 2))
        scale = ((sig * d).sum(dim=1) / var_p.clamp_min(1e-12))[:, None, None]
    out = scale * p0 @ rot.transpose(1, 2) + mu_g
    return out.to(pred.dtype)


def per_vertex_error(pred: Tensor, gt: Tensor, align: Alignment = "rigid", mask: Tensor | None = None) -> Tensor:
    """Mean per-vertex Euclidean distance in mm.

    Args:
        pred: (B, N, 3) predicted vertices in mm.
        gt: (B, N, 3) ground-truth vertices in mm (same topology).
        align: ``"none"`` (camera frame as posed), ``"rigid"`` or ``"similarity"`` (per-face alignment first).
        mask: optional (N,) vertex weights in [0, 1] (e.g. the rendered face region); the mean is weighted.

    Returns:
        (B,) mean distance in mm.
    """
    if align not in ("none", "rigid", "similarity"):
        raise ValueError(f"align must be 'none', 'rigid' or 'similarity', got {align!r}")
    if align != "none":
        pred = align_vertices(pred, gt, with_scale=align == "similarity", weights=mask)
    elif pred.shape != gt.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ")
    dist = torch.linalg.vector_norm(pred - gt, dim=-1)
    if mask is None:
        return dist.mean(dim=1)
    m = mask.to(dist).reshape(1, -1)
    return (dist * m).sum(dim=1) / m.sum().clamp_min(1e-12)


@dataclass(frozen=True)
class CoefficientErrors:
    """Per-face coefficient errors (all (B,)).

    Attributes:
        id: RMS error of the identity coefficients.
        exp: RMS error of the expression coefficients.
        tex: RMS error of the albedo coefficients.
        sh: RMS error of the 27 SH lighting coefficients.
        angles_deg: mean absolute error of pitch, yaw and roll in degrees (wrapped to [-180, 180]).
        yaw_deg: absolute yaw error in degrees.
        trans_mm: Euclidean translation error in mm.
    """

    id: Tensor
    exp: Tensor
    tex: Tensor
    sh: Tensor
    angles_deg: Tensor
    yaw_deg: Tensor
    trans_mm: Tensor


def _rms(a: Tensor, b: Tensor) -> Tensor:
    if a.shape != b.shape:
        raise ValueError(f"coefficient groups differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.shape[1] == 0:
        return torch.zeros(a.shape[0], dtype=a.dtype, device=a.device)
    return torch.sqrt(((a - b) ** 2).mean(dim=1))


def coefficient_errors(pred: FaceParams, gt: FaceParams) -> CoefficientErrors:
    """Errors between predicted and ground-truth coefficients of the same face model (see
    :class:`CoefficientErrors`)."""
    diff = torch.rad2deg(pred.angles - gt.angles)
    diff = torch.remainder(diff + 180.0, 360.0) - 180.0
    return CoefficientErrors(
        id=_rms(pred.id, gt.id),
        exp=_rms(pred.exp, gt.exp),
        tex=_rms(pred.tex, gt.tex),
        sh=_rms(pred.sh, gt.sh),
        angles_deg=diff.abs().mean(dim=1),
        yaw_deg=diff[:, 1].abs(),
        trans_mm=torch.linalg.vector_norm(pred.trans - gt.trans, dim=1),
    )
