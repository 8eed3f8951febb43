"""Ground-truth coefficient supervision (the semi-supervised part of MSMA / MLANet).

Used where the batch carries coefficients in the training face model's own space (synthetic data; 300W-LP
fitted to BFM when training with BFM): ``FaceBatch.params`` with ``FaceBatch.params_valid``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from msma.face_model.params import GROUPS, FaceParams

#: Default group weights: shape and albedo only. Pose, light and translation are off because geometric and
#: photometric augmentation change them without updating the ground truth.
DEFAULT_GROUP_WEIGHTS: Mapping[str, float] = {"id": 1.0, "exp": 1.0, "tex": 1.0, "angles": 0.0, "sh": 0.0, "trans": 0.0}


def param_supervision_loss(
    predicted: FaceParams,
    target: FaceParams,
    valid: Tensor,
    group_weights: Mapping[str, float] = DEFAULT_GROUP_WEIGHTS,
) -> Tensor:
    """Weighted per-group mean squared coefficient error over the rows that have ground truth.

    ``sum_{b valid} sum_g w_g mean_j (p_bgj - t_bgj)^2 / n_valid``; rows with ``valid`` False (whose targets
    may hold zeros or NaN) contribute nothing; no valid row gives 0 (still connected to the graph).

    Args:
        predicted: predicted coefficients (B rows).
        target: ground-truth coefficients in the same layout (B rows).
        valid: (B,) bool, rows with ground truth (``FaceBatch.params_valid``).
        group_weights: weight per group name (``id``, ``exp``, ``tex``, ``angles``, ``sh``, ``trans``);
            missing groups weigh 0.

    Returns:
        Scalar loss (coefficient units squared; radians^2 for angles, mm^2 for trans).
    """
    unknown = set(group_weights) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown coefficient groups {sorted(unknown)}; known: {list(GROUPS)}")
    b = predicted.batch_size
    if target.batch_size != b or valid.shape != (b,):
        raise ValueError(f"supervision: predicted has {b} rows, target {target.batch_size}, valid {tuple(valid.shape)}")
    ok = valid.to(torch.bool)
    per_row = predicted.id.new_zeros(b)
    for g, pred in predicted.items():
        w = float(group_weights.get(g, 0.0))
        if w == 0.0 or pred.shape[1] == 0:
            continue
        tgt = getattr(target, g)
        if tgt.shape != pred.shape:
            raise ValueError(f"supervision: target {g} is {tuple(tgt.shape)}, prediction {tuple(pred.shape)}")
        clean = torch.where(ok[:, None], tgt.to(pred.dtype), pred.detach())
        per_row = per_row + w * ((pred - clean) ** 2).mean(dim=1)
    per_row = torch.where(ok, per_row, per_row.new_zeros(()))
    return per_row.sum() / ok.sum().clamp_min(1).to(per_row.dtype)


class ParamSupervisionLoss(nn.Module):
    """:func:`param_supervision_loss` with fixed group weights.

    Args:
        group_weights: weight per coefficient group; None for :data:`DEFAULT_GROUP_WEIGHTS`.
    """

    def __init__(self, group_weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.group_weights = dict(DEFAULT_GROUP_WEIGHTS if group_weights is None else group_weights)
        unknown = set(self.group_weights) - set(GROUPS)
        if unknown:
            raise ValueError(f"unknown coefficient groups {sorted(unknown)}; known: {list(GROUPS)}")

    def forward(self, predicted: FaceParams, target: FaceParams, valid: Tensor) -> Tensor:
        """Predicted and target FaceParams (B rows), (B,) valid -> scalar."""
        return param_supervision_loss(predicted, target, valid, self.group_weights)
