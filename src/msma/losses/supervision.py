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
    """Weighted per-group mean squared coefficient error, each group over the rows that have it.

    ``sum_g w_g sum_{b: valid_bg} mean_j (p_bgj - t_bgj)^2 / n_g`` with ``n_g`` the number of rows that carry
    group ``g`` (the supervised count, not the batch size); with a (B,) ``valid`` every group of a valid row
    counts, which is ``sum_{b valid} sum_g w_g mse_bg / n_valid``. Rows / groups without ground truth (whose
    targets may hold zeros or NaN) contribute nothing; nothing valid gives 0 (still connected to the graph).

    Args:
        predicted: predicted coefficients (B rows).
        target: ground-truth coefficients in the same layout (B rows).
        valid: (B,) bool rows with ground truth (``FaceBatch.params_valid``), or (B, G) bool per group of
            :data:`~msma.face_model.params.GROUPS` (``FaceBatch.group_valid()``).
        group_weights: weight per group name (``id``, ``exp``, ``tex``, ``angles``, ``sh``, ``trans``);
            missing groups weigh 0.

    Returns:
        Scalar loss (coefficient units squared; radians^2 for angles, mm^2 for trans).
    """
    unknown = set(group_weights) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown coefficient groups {sorted(unknown)}; known: {list(GROUPS)}")
    b = predicted.batch_size
    if target.batch_size != b or valid.shape not in ((b,), (b, len(GROUPS))):
        raise ValueError(
            f"supervision: predicted has {b} rows, target {target.batch_size}, valid {tuple(valid.shape)} "
            f"(expected ({b},) or ({b}, {len(GROUPS)}))"
        )
    ok = valid.to(torch.bool)
    if ok.ndim == 1:
        ok = ok[:, None].expand(b, len(GROUPS))
    total = predicted.id.new_zeros(())
    for g, pred in predicted.items():
        w = float(group_weights.get(g, 0.0))
        if w == 0.0 or pred.shape[1] == 0:
            continue
        tgt = getattr(target, g)
        if tgt.shape != pred.shape:
            raise ValueError(f"supervision: target {g} is {tuple(tgt.shape)}, prediction {tuple(pred.shape)}")
        rows = ok[:, GROUPS.index(g)]
        clean = torch.where(rows[:, None], tgt.to(pred.dtype), pred.detach())
        per_row = torch.where(rows, ((pred - clean) ** 2).mean(dim=1), pred.new_zeros(()))
        total = total + w * per_row.sum() / rows.sum().clamp_min(1).to(pred.dtype)
    return total


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
        """Predicted and target FaceParams (B rows), (B,) or (B, G) valid -> scalar."""
        return param_supervision_loss(predicted, target, valid, self.group_weights)
