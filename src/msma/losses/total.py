"""The training objective: every loss term weighted by a :class:`~msma.losses.config.LossConfig`.

Deep3DFaceRecon_pytorch ``models/facerecon_model.py`` ``compute_losses``::

    total = w_feat feat + w_color color + w_reg reg + w_gamma gamma + w_lm lm + w_reflc reflc

plus, here, ``w_param param`` (ground-truth coefficient supervision where the batch has it; MSMA / MLANet's
semi-supervised term).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn

from msma.face_model.output import FaceOutput
from msma.face_model.params import CoeffLayout, FaceParams
from msma.losses.config import LossConfig
from msma.losses.identity import IdentityLoss
from msma.losses.landmark import LandmarkLoss
from msma.losses.photometric import PhotometricLoss
from msma.losses.regularization import coefficient_regularization, gamma_loss, reflectance_loss
from msma.losses.skin import skin_probability
from msma.losses.supervision import param_supervision_loss
from msma.render.base import RenderOutput

#: Term names, in logging order.
TERM_NAMES: tuple[str, ...] = ("color", "lm", "reg", "gamma", "reflc", "param", "feat")


class LossTargets(Protocol):
    """What the loss reads from a batch (:class:`msma.data.batch.FaceBatch` provides it).

    Attributes:
        image: (B, 3, S, S) float RGB in [0, 1].
        landmarks: (B, 68, 2) target landmarks in crop pixels (NaN rows where unknown).
        landmark_valid: (B,) bool.
        params: (B, P) flat ground-truth coefficients, or None.
        params_valid: (B,) bool, True where ``params`` holds ground truth.
        skin_mask: (B, 1, S, S) skin probability in [0, 1], or None (computed from the image).
    """

    @property
    def image(self) -> Tensor: ...
    @property
    def landmarks(self) -> Tensor: ...
    @property
    def landmark_valid(self) -> Tensor: ...
    @property
    def params(self) -> Tensor | None: ...
    @property
    def params_valid(self) -> Tensor: ...
    @property
    def skin_mask(self) -> Tensor | None: ...

    def gt_params(self, layout: CoeffLayout) -> FaceParams | None:
        """``params`` split by ``layout`` (None without ground truth)."""
        ...


@dataclass(frozen=True)
class LossOutput:
    """Result of :class:`FaceReconLoss`.

    Attributes:
        total: scalar, the sum of ``terms`` (differentiable).
        terms: weighted contribution of each computed term (detached scalars, for logging); ``total`` is their
            sum. Keys among :data:`TERM_NAMES`.
        raw: the same terms before weighting (detached scalars).
    """

    total: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    raw: dict[str, Tensor] = field(default_factory=dict)

    def nonfinite_terms(self) -> list[str]:
        """Names of the terms (and ``"total"``) that are NaN or infinite (synchronises with the device)."""
        bad = [name for name, value in self.terms.items() if not bool(torch.isfinite(value).all())]
        if not bool(torch.isfinite(self.total).all()):
            bad.append("total")
        return bad


def is_finite(out: LossOutput) -> bool:
    """True when the total loss is finite, i.e. the optimisation step may be taken."""
    return bool(torch.isfinite(out.total).all())


def _layout_of(params: FaceParams) -> CoeffLayout:
    return CoeffLayout(int(params.id.shape[1]), int(params.exp.shape[1]), int(params.tex.shape[1]))


class FaceReconLoss(nn.Module):
    """Combines the photometric, landmark, regularisation, supervision and (optional) identity losses.

    Args:
        config: weights and switches; None for the MSMA defaults.
    """

    def __init__(self, config: LossConfig | None = None) -> None:
        super().__init__()
        self.config = LossConfig() if config is None else config
        self.photometric = PhotometricLoss()
        self.landmark = LandmarkLoss()
        self.identity: IdentityLoss | None = None
        if self.config.use_identity and self.config.w_feat > 0:
            if not self.config.identity_weights:
                raise ValueError(
                    "loss.use_identity is true but loss.identity_weights is not set: give the path of an "
                    "insightface arcface_torch backbone.pth, or set loss.use_identity=false"
                )
            self.identity = IdentityLoss(self.config.identity_weights, arch=self.config.identity_arch)

    def skin_mask(self, batch: LossTargets) -> Tensor | None:
        """(B, 1, S, S) photometric attention: the batch's mask, else the skin GMM of the image (or None)."""
        if batch.skin_mask is not None:
            return batch.skin_mask
        if self.config.skin_from_image:
            return skin_probability(batch.image)
        return None

    def forward(
        self,
        batch: LossTargets,
        params: FaceParams,
        face: FaceOutput,
        render: RenderOutput,
        skin_vertex_mask: Tensor,
    ) -> LossOutput:
        """Computes every enabled term.

        Args:
            batch: the input batch: ``image`` (B, 3, S, S), ``landmarks`` (B, 68, 2) crop pixels with
                ``landmark_valid``, optional ``params`` (B, P) with ``params_valid``, optional ``skin_mask``.
            params: predicted coefficients (B rows).
            face: the face model's output for ``params`` at ``image_size == S``.
            render: the rendering of ``face`` at S x S.
            skin_vertex_mask: (N,) the face model's per-vertex skin weights (``FaceModel.skin_mask``).

        Returns:
            :class:`LossOutput` with the total and the weighted / raw terms.
        """
        cfg = self.config
        image = batch.image
        size = int(image.shape[-1])
        if render.image.shape != image.shape:
            raise ValueError(f"render {tuple(render.image.shape)} and input image {tuple(image.shape)} differ in shape")
        if face.image_size != size:
            raise ValueError(f"face landmarks were projected at {face.image_size} px, the batch images are {size} px")

        raw: dict[str, Tensor] = {}
        weights: dict[str, float] = {}

        if cfg.w_color > 0:
            raw["color"] = self.photometric(image, render.image, render.mask, self.skin_mask(batch))
            weights["color"] = cfg.w_color
        if cfg.w_lm > 0:
            raw["lm"] = self.landmark(face.landmarks_2d, batch.landmarks, batch.landmark_valid, size)
            weights["lm"] = cfg.w_lm
        if cfg.w_reg > 0:
            raw["reg"] = coefficient_regularization(params, cfg.w_id, cfg.w_exp, cfg.w_tex)
            weights["reg"] = cfg.w_reg
        if cfg.w_gamma > 0:
            raw["gamma"] = gamma_loss(params.sh)
            weights["gamma"] = cfg.w_gamma
        if cfg.w_reflc > 0:
            raw["reflc"] = reflectance_loss(face.albedo, skin_vertex_mask.to(face.albedo.device))
            weights["reflc"] = cfg.w_reflc
        if cfg.w_param > 0 and batch.params is not None:
            layout = _layout_of(params)
            if batch.params.shape[1] != layout.total:
                raise ValueError(
                    f"batch ground-truth params have {batch.params.shape[1]} coefficients, the predicted layout "
                    f"{layout} has {layout.total}: supervision needs both in the same face-model space"
                )
            target = batch.gt_params(layout)
            assert target is not None
            target = target.to(params.id.dtype)
            raw["param"] = param_supervision_loss(params, target, batch.params_valid, cfg.param_group_weights())
            weights["param"] = cfg.w_param
        if self.identity is not None:
            raw["feat"] = self.identity(image, render.image, batch.landmarks, face.landmarks_2d, batch.landmark_valid)
            weights["feat"] = cfg.w_feat

        weighted = {name: weights[name] * value for name, value in raw.items()}
        if weighted:
            total = torch.stack(list(weighted.values())).sum()
        else:
            total = params.id.sum() * 0.0
        return LossOutput(
            total=total,
            terms={k: v.detach() for k, v in weighted.items()},
            raw={k: v.detach() for k, v in raw.items()},
        )
