"""68-point landmark loss (Deep3DFaceRecon_pytorch ``models/losses.py``, ``landmark_loss``).

Deep3D's weights: ``weight[28:31] = 20`` and ``weight[-8:] = 20`` with NumPy (0-based) indexing, i.e. 0-based
points 28, 29, 30 (the lower nose bridge and nose tip; 1-based iBUG points 29-31) and 60..67 (the inner lips;
1-based 61-68), weight 1 elsewhere. Deep3D divides the weighted sum of squared pixel errors by
``batch x 68``; its images are 224 px, so its ``w_lm`` is calibrated for pixel units at 224. Here errors are
rescaled to a 224 px image (``x 224 / image_size``), which keeps that calibration at any resolution.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: Number of landmarks (iBUG / Multi-PIE 68-point scheme).
N_LANDMARKS = 68
#: 0-based indices Deep3D weights by 20 (``weight[28:31]``, ``weight[-8:]``).
HEAVY_LANDMARKS: tuple[int, ...] = (28, 29, 30, *range(60, 68))
#: Weight of :data:`HEAVY_LANDMARKS`.
HEAVY_WEIGHT = 20.0
#: Image size Deep3D's landmark weight is calibrated for.
REFERENCE_SIZE = 224


def deep3d_landmark_weights(device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """(68,) per-point weights: 20 on :data:`HEAVY_LANDMARKS`, 1 elsewhere."""
    w = torch.ones(N_LANDMARKS, device=device, dtype=dtype)
    w[list(HEAVY_LANDMARKS)] = HEAVY_WEIGHT
    return w


def landmark_loss(
    predicted: Tensor,
    target: Tensor,
    valid: Tensor | None = None,
    image_size: int = REFERENCE_SIZE,
    weights: Tensor | None = None,
) -> Tensor:
    """Weighted squared L2 landmark error.

    ``sum_{b valid} sum_k w_k ||p_bk - t_bk||^2 / (n_valid * 68) * (224 / image_size)^2``; points whose target
    is not finite count as zero error; rows with ``valid`` False contribute nothing (a batch without any
    valid row gives 0, still connected to ``predicted``'s graph).

    Args:
        predicted: (B, 68, 2) predicted landmarks in pixels (x right, y down).
        target: (B, 68, 2) target landmarks in the same frame; NaN where unknown.
        valid: (B,) bool, rows with landmarks (``FaceBatch.landmark_valid``); None means all rows.
        image_size: side of the square image the pixel coordinates refer to.
        weights: (68,) per-point weights; None for Deep3D's (:func:`deep3d_landmark_weights`).

    Returns:
        Scalar loss in squared pixels at 224 px.
    """
    if predicted.shape != target.shape or predicted.ndim != 3 or predicted.shape[-1] != 2:
        raise ValueError(
            f"landmarks must be (B, K, 2) with equal shapes, got {tuple(predicted.shape)} and {tuple(target.shape)}"
        )
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    b, k, _ = predicted.shape
    if weights is None:
        if k != N_LANDMARKS:
            raise ValueError(f"Deep3D's landmark weights are for {N_LANDMARKS} points, got {k}; pass weights")
        weights = deep3d_landmark_weights(predicted.device, predicted.dtype)
    if weights.shape != (k,):
        raise ValueError(f"landmark weights must be ({k},), got {tuple(weights.shape)}")
    point_ok = torch.isfinite(target).all(dim=-1)  # (B, K)
    if valid is not None:
        if valid.shape != (b,):
            raise ValueError(f"landmark valid flags must be ({b},), got {tuple(valid.shape)}")
        point_ok = point_ok & valid.to(torch.bool)[:, None]
    row_ok = point_ok.any(dim=1)
    clean = torch.where(point_ok[..., None], target.to(predicted.dtype), predicted.detach())
    sq = ((predicted - clean) ** 2).sum(dim=-1) * weights * point_ok.to(predicted.dtype)  # (B, K)
    n_rows = row_ok.sum().clamp_min(1).to(predicted.dtype)
    scale = (REFERENCE_SIZE / image_size) ** 2
    return sq.sum() / (n_rows * k) * scale


class LandmarkLoss(nn.Module):
    """:func:`landmark_loss` with fixed per-point weights (Deep3D's by default).

    Args:
        weights: (68,) per-point weights, or None for Deep3D's (20 on 0-based 28-30 and 60-67).
    """

    weights: Tensor

    def __init__(self, weights: Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer(
            "weights", deep3d_landmark_weights() if weights is None else weights.detach().clone(), persistent=False
        )

    def forward(
        self, predicted: Tensor, target: Tensor, valid: Tensor | None = None, image_size: int = REFERENCE_SIZE
    ) -> Tensor:
        """See :func:`landmark_loss`: (B, 68, 2) predicted and target pixels, (B,) valid -> scalar."""
        return landmark_loss(predicted, target, valid, image_size, self.weights.to(predicted.dtype))
