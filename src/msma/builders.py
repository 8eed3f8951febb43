"""Builds the parts of an experiment from their typed configuration groups (plain arguments where possible).

The checkpoint entry points are :func:`msma.checkpoint.load_inference_model` (encoder + face model +
renderer) and :func:`msma.training.checkpoint.load_training_module` (everything, losses included).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from msma.face_model.model import FaceModel
    from msma.face_model.params import CoeffLayout
    from msma.losses.config import LossConfig
    from msma.losses.total import FaceReconLoss
    from msma.models.config import EncoderConfig
    from msma.models.encoder import FaceEncoder
    from msma.render.renderer import MeshRenderer


def build_face_model(name: str = "ict", path: str | None = None) -> FaceModel:
    """Loads the face model (:func:`msma.face_model.load_face_model`) in eval mode."""
    from msma.face_model import load_face_model

    return load_face_model(name=name, path=path).eval()


def build_renderer(backend: str = "auto", antialias: bool = True) -> MeshRenderer:
    """A :class:`msma.render.renderer.MeshRenderer` with the given backend."""
    from msma.render.renderer import MeshRenderer

    return MeshRenderer(backend=backend, antialias=antialias)


def build_encoder(cfg: EncoderConfig, layout: CoeffLayout) -> FaceEncoder:
    """The encoder of ``cfg`` in the face model's coefficient ``layout``."""
    from msma.models import build_encoder_from_config

    return build_encoder_from_config(cfg, layout)


def build_loss(cfg: LossConfig) -> FaceReconLoss:
    """:class:`msma.losses.total.FaceReconLoss` of a :class:`msma.losses.config.LossConfig`."""
    from msma.losses.total import FaceReconLoss

    return FaceReconLoss(cfg)
