"""``FacePipeline``: encoder -> face model -> renderer, the part of msma that inference and evaluation need.

A trained network is a :class:`FacePipeline` (never a loss): :func:`msma.checkpoint.load_inference_model`
rebuilds one from a checkpoint, :func:`msma.checkpoint.untrained_pipeline` builds the untrained one, and the
training module (:class:`msma.training.module.FaceReconModule`) runs the same :func:`reconstruct` on its own
encoder, face model and renderer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from msma.face_model.mirror import CoefficientMirror
from msma.face_model.model import FaceModel
from msma.face_model.output import FaceOutput
from msma.face_model.params import CoeffLayout, FaceParams, mirror_pose
from msma.models.encoder import FaceEncoder
from msma.render.base import RenderOutput
from msma.render.renderer import MeshRenderer
from msma.utils.precision import full_precision


@dataclass(frozen=True)
class StepOutput:
    """Everything one forward pass produces (for the loss, the metrics and the pictures).

    Attributes:
        params: predicted coefficients.
        face: posed geometry and colour at the batch's image size.
        render: rendered image / mask (B, C, H, W), or None when rendering was skipped.
    """

    params: FaceParams
    face: FaceOutput
    render: RenderOutput | None

    def detach(self) -> StepOutput:
        """A copy with every tensor detached from the graph."""
        return StepOutput(
            self.params.detach(), self.face.detach(), None if self.render is None else self.render.detach()
        )


def predict_params(
    encoder: nn.Module, image: Tensor, flip_average: bool = False, mirror: CoefficientMirror | None = None
) -> FaceParams:
    """The encoder's coefficients of square crops, optionally averaged over the crop's mirror image.

    Args:
        encoder: image (B, 3, S, S) float RGB in [0, 1] -> :class:`FaceParams`.
        image: (B, 3, S, S) crops.
        flip_average: also run the horizontally mirrored crops and average each face's coefficients with the
            mirrored coefficients of its mirror image (test-time augmentation). With ``mirror`` (the face
            model's :class:`~msma.face_model.mirror.CoefficientMirror`) every group is averaged (identity,
            expression, albedo, light and pose); without it the pose alone (pitch, yaw, roll in radians;
            translation in mm; :func:`msma.face_model.params.mirror_pose`) and the other groups stay the crop's
            own. A mirror-equivariant network predicts the same either way; one that is not gets the mean of its
            two estimates. The crops and their mirrors go through the encoder as one (2B, 3, S, S) batch: the
            encoder must treat the rows independently (eval mode).
        mirror: the coefficient mirror of the encoder's face model, or None (pose only).

    Returns:
        :class:`FaceParams` of the batch.
    """
    if not flip_average:
        out: FaceParams = encoder(image)
        return out
    b = int(image.shape[0])
    both: FaceParams = encoder(torch.cat([image, image.flip(-1)]))
    if mirror is not None:
        return mirror.average(both[:b], both[b:])
    params, mirrored = both[:b], mirror_pose(both[b:])
    return params.replace(angles=0.5 * (params.angles + mirrored.angles), trans=0.5 * (params.trans + mirrored.trans))


def treated_params(
    encoder: nn.Module,
    face_model: FaceModel,
    image: Tensor,
    flip_average: bool = False,
    mirror: CoefficientMirror | None = None,
    clamp_expressions: bool = False,
) -> FaceParams:
    """The encoder's coefficients of square crops with ``msma reconstruct``'s test-time treatment, float32.

    Args:
        encoder / image: as :func:`predict_params` (runs under the caller's autocast, if any).
        face_model: the face model of the encoder's layout.
        flip_average / mirror: average over the crop and its mirror image (:func:`predict_params`; the encoder
            must be in eval mode).
        clamp_expressions: project the coefficients onto the face model's range
            (:meth:`~msma.face_model.model.FaceModel.in_range`: blendshape weights to [0, 1]).
    """
    params = predict_params(encoder, image, flip_average, mirror).to(torch.float32)
    return face_model.in_range(params) if clamp_expressions else params


def reconstruct(
    encoder: nn.Module,
    face_model: FaceModel,
    renderer: MeshRenderer | None,
    image: Tensor,
    flip_average: bool = False,
    mirror: CoefficientMirror | None = None,
    clamp_expressions: bool = False,
) -> StepOutput:
    """Runs encoder, face model and (when ``renderer`` is given) the renderer on square crops.

    The encoder runs under the caller's autocast (if any); its coefficients are cast to float32 and the face
    model and renderer run in float32 (:func:`msma.utils.precision.full_precision`). The defaults are the
    network's raw single pass (training, validation, the synthetic split); inference and the real-photo
    benchmarks add the test-time treatment of ``msma reconstruct``.

    Args:
        encoder: image (B, 3, S, S) float RGB in [0, 1] -> :class:`FaceParams` in ``face_model.layout``.
        face_model: the face model.
        renderer: the rasteriser, or None to skip rendering.
        image: (B, 3, S, S) float RGB in [0, 1].
        flip_average / mirror / clamp_expressions: the test-time treatment (:func:`treated_params`).
    """
    if image.ndim != 4 or image.shape[1] != 3 or image.shape[-1] != image.shape[-2]:
        raise ValueError(f"expected square images (B, 3, S, S), got {tuple(image.shape)}")
    params = treated_params(encoder, face_model, image, flip_average, mirror, clamp_expressions)
    with full_precision(image.device):
        face = face_model(params, image_size=int(image.shape[-1]))
        rendered = renderer.render(face, face_model.tri) if renderer is not None else None
    return StepOutput(params=params, face=face, render=rendered)


class FacePipeline(nn.Module):
    """A trained (or untrained) network with its face model and renderer; no loss.

    Args:
        encoder: the encoder.
        face_model: the face model of the encoder's layout.
        renderer: the rasteriser.
        config: the resolved experiment configuration it was trained with (plain dict; ``{}`` if unknown).
    """

    def __init__(
        self, encoder: FaceEncoder, face_model: FaceModel, renderer: MeshRenderer, config: dict[str, Any]
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.face_model = face_model
        self.renderer = renderer
        self.config = dict(config)

    @property
    def layout(self) -> CoeffLayout:
        return self.face_model.layout

    @property
    def image_size(self) -> int:
        """The training crop size S of the configuration (224 when unknown)."""
        return int(dict(self.config.get("data") or {}).get("image_size") or 224)

    def forward(self, image: Tensor) -> FaceParams:
        """Image (B, 3, S, S) float RGB in [0, 1] -> predicted :class:`FaceParams`."""
        params: FaceParams = self.encoder(image)
        return params

    def reconstruct(
        self,
        image: Tensor,
        render: bool = True,
        flip_average: bool = False,
        mirror: CoefficientMirror | None = None,
        clamp_expressions: bool = False,
    ) -> StepOutput:
        """:func:`reconstruct` with this pipeline's parts."""
        renderer = self.renderer if render else None
        return reconstruct(self.encoder, self.face_model, renderer, image, flip_average, mirror, clamp_expressions)
