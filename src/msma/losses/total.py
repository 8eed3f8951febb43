"""The training objective: every loss term weighted by a :class:`~msma.losses.config.LossConfig`.

Deep3DFaceRecon_pytorch ``models/facerecon_model.py`` ``compute_losses``::

    total = w_feat feat + w_color color + w_reg reg + w_gamma gamma + w_lm lm + w_reflc reflc

plus, here, ``w_param param`` (ground-truth coefficient supervision where the batch has it; MSMA / MLANet's
semi-supervised term) and ``w_dense dense`` (MediaPipe's dense landmarks of photos, :mod:`msma.losses.dense`).

Mixed-source batches (``data.sources``): every term is applied only to the samples that carry its target and
normalised by their count (``lm``: rows with landmarks; ``dense``: rows with dense landmarks; ``param``: per
coefficient group, rows with that group;
``color``: every sample, its attention mask the sample's own skin mask where it has one, else the skin model's
probability of the image; the priors ``reg``/``gamma``/``reflc`` and ``feat`` act on every prediction).
:attr:`LossOutput.by_source` holds the raw terms of each source's rows (the same functions on the sub-batch)
and :attr:`LossOutput.counts` the number of supervised samples of each term.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn

from msma.face_model.output import FaceOutput
from msma.face_model.params import GROUPS, CoeffLayout, FaceParams
from msma.losses.config import LossConfig
from msma.losses.dense import DenseLandmarkLoss
from msma.losses.identity import IdentityLoss
from msma.losses.landmark import LandmarkLoss
from msma.losses.photometric import PhotometricLoss
from msma.losses.regularization import coefficient_regularization, gamma_loss, reflectance_loss
from msma.losses.skin import skin_probability
from msma.losses.supervision import param_supervision_loss
from msma.render.base import RenderOutput

#: Term names, in logging order.
TERM_NAMES: tuple[str, ...] = ("color", "lm", "dense", "reg", "gamma", "reflc", "param", "feat")


class LossTargets(Protocol):
    """What the loss reads from a batch (:class:`msma.data.batch.FaceBatch` provides it).

    Attributes:
        image: (B, 3, S, S) float RGB in [0, 1].
        landmarks: (B, 68, 2) target landmarks in crop pixels (NaN rows where unknown).
        landmark_valid: (B,) bool.
        params: (B, P) flat ground-truth coefficients, or None.
        params_valid: (B,) bool, True where ``params`` holds ground truth.
        skin_mask: (B, 1, S, S) skin probability in [0, 1], or None (computed from the image).
        dense: (B, K, 3) dense MediaPipe landmarks in crop pixels, or None (``target_valid("dense")`` the rows).
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
    @property
    def dense(self) -> Tensor | None: ...

    def target_valid(self, target: str) -> Tensor:
        """(B,) bool: the samples that carry ``target``."""
        ...

    def group_valid(self) -> Tensor:
        """(B, G) bool: the coefficient groups each sample carries."""
        ...

    def sources(self) -> Tensor:
        """(B,) int64 source index of each sample."""
        ...

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
        counts: number of samples each term supervised (``param``: rows with at least one weighted group).
        by_source: ``{source index: {term: raw value}}`` over that source's rows of the batch, filled when the
            batch mixes sources; a term none of the source's rows carries the target of is left out, and so is
            ``feat`` (it would run the recognition network again).
    """

    total: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    raw: dict[str, Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    by_source: dict[int, dict[str, Tensor]] = field(default_factory=dict)

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
        dense: the dense-landmark term of the training face model (:meth:`DenseLandmarkLoss.from_face_model`);
            required when ``config.w_dense > 0`` (``msma.builders.build_loss(cfg, face_model)`` builds it).
    """

    def __init__(self, config: LossConfig | None = None, dense: DenseLandmarkLoss | None = None) -> None:
        super().__init__()
        self.config = LossConfig() if config is None else config
        self.photometric = PhotometricLoss()
        self.landmark = LandmarkLoss()
        if self.config.w_dense > 0 and dense is None:
            raise ValueError(
                "loss.w_dense > 0 needs the dense-landmark term of the face model: build the loss with "
                "msma.builders.build_loss(cfg, face_model) (or pass DenseLandmarkLoss.from_face_model(face_model))"
            )
        self.dense: DenseLandmarkLoss | None = dense if self.config.w_dense > 0 else None
        self.identity: IdentityLoss | None = None
        if self.config.use_identity and self.config.w_feat > 0:
            if not self.config.identity_weights:
                raise ValueError(
                    "loss.use_identity is true but loss.identity_weights is not set: give the path of an "
                    "insightface arcface_torch backbone.pth, or set loss.use_identity=false"
                )
            self.identity = IdentityLoss(self.config.identity_weights, arch=self.config.identity_arch)

    def skin_mask(self, batch: LossTargets) -> Tensor | None:
        """(B, 1, S, S) photometric attention: each sample's own mask where it has one, else the skin GMM of the
        image (``skin_from_image``) or ones; None when no sample has a mask and the GMM is off."""
        has = batch.target_valid("skin_mask")
        given = batch.skin_mask
        if given is not None and bool(has.all()):
            return given
        if not self.config.skin_from_image:
            if given is None:
                return None
            fallback = torch.ones_like(given)
        else:
            fallback = skin_probability(batch.image)
        if given is None:
            return fallback
        return torch.where(has.to(given.device)[:, None, None, None], given.to(fallback.dtype), fallback)

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

        weights: dict[str, float] = {
            name: w
            for name, w in (
                ("color", cfg.w_color),
                ("lm", cfg.w_lm),
                ("reg", cfg.w_reg),
                ("gamma", cfg.w_gamma),
                ("reflc", cfg.w_reflc),
            )
            if w > 0
        }
        target: FaceParams | None = None
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
            weights["param"] = cfg.w_param
        group_weights = cfg.param_group_weights()
        skin = self.skin_mask(batch) if "color" in weights else None
        lm_valid = batch.target_valid("landmarks")
        dense_valid = batch.target_valid("dense")
        dense_target = getattr(batch, "dense", None)
        if self.dense is not None:
            weights["dense"] = cfg.w_dense
        group_valid = batch.group_valid()
        skin_vertices = skin_vertex_mask.to(face.albedo.device)

        def terms(rows: Tensor | None) -> dict[str, Tensor]:
            """Raw terms on the batch's ``rows`` (None: every row)."""

            def r(x: Tensor) -> Tensor:
                return x if rows is None else x[rows]

            p = params if rows is None else FaceParams(**{g: v[rows] for g, v in params.items()})
            out: dict[str, Tensor] = {}
            if "color" in weights:
                out["color"] = self.photometric(
                    r(image), r(render.image), r(render.mask), None if skin is None else r(skin)
                )
            if "lm" in weights:
                out["lm"] = self.landmark(r(face.landmarks_2d), r(batch.landmarks), r(lm_valid), size)
            if "dense" in weights:
                assert self.dense is not None
                if dense_target is None:  # no row of this batch has the target: 0, still on the graph
                    out["dense"] = (r(face.vertices).sum() * 0.0).abs()
                else:
                    out["dense"] = self.dense(r(face.vertices), r(face.normals), r(dense_target), r(dense_valid), size)
            if "reg" in weights:
                out["reg"] = coefficient_regularization(p, cfg.w_id, cfg.w_exp, cfg.w_tex)
            if "gamma" in weights:
                out["gamma"] = gamma_loss(p.sh)
            if "reflc" in weights:
                out["reflc"] = reflectance_loss(r(face.albedo), skin_vertices)
            if "param" in weights:
                assert target is not None
                t = target if rows is None else FaceParams(**{g: v[rows] for g, v in target.items()})
                out["param"] = param_supervision_loss(p, t, r(group_valid), group_weights)
            return out

        raw = terms(None)
        if self.identity is not None:
            raw["feat"] = self.identity(image, render.image, batch.landmarks, face.landmarks_2d, lm_valid)
            weights["feat"] = cfg.w_feat
        b = int(image.shape[0])
        weighted_groups = torch.tensor([group_weights.get(g, 0.0) != 0.0 for g in GROUPS], device=group_valid.device)
        counts = {name: b for name in raw}
        if "lm" in raw:
            counts["lm"] = int(lm_valid.sum())
        if "dense" in raw:
            counts["dense"] = int(dense_valid.sum())
        if "param" in raw:
            counts["param"] = int((group_valid & weighted_groups).any(dim=1).sum())
        by_source: dict[int, dict[str, Tensor]] = {}
        source_index = batch.sources()
        present = sorted({int(v) for v in source_index.tolist()})
        if len(present) > 1:
            with torch.no_grad():
                for src in present:
                    rows = source_index == src
                    supervised = {
                        "lm": bool(lm_valid[rows].any()),
                        "dense": bool(dense_valid[rows].any()),
                        "param": bool((group_valid[rows] & weighted_groups).any()),
                    }
                    by_source[src] = {k: v.detach() for k, v in terms(rows).items() if supervised.get(k, True)}

        weighted = {name: weights[name] * value for name, value in raw.items()}
        if weighted:
            total = torch.stack(list(weighted.values())).sum()
        else:
            total = params.id.sum() * 0.0
        return LossOutput(
            total=total,
            terms={k: v.detach() for k, v in weighted.items()},
            raw={k: v.detach() for k, v in raw.items()},
            counts=counts,
            by_source=by_source,
        )
