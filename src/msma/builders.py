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


def build_loss(cfg: LossConfig, face_model: FaceModel | None = None) -> FaceReconLoss:
    """:class:`msma.losses.total.FaceReconLoss` of a :class:`msma.losses.config.LossConfig`.

    Args:
        cfg: the loss configuration.
        face_model: the training face model; needed when ``cfg.w_dense > 0`` (the dense-landmark term's
            correspondence, which needs MediaPipe's ``face_landmarker.task``: an ``AssetError`` here, at setup,
            when it is missing).
    """
    from msma.losses.total import FaceReconLoss

    dense = None
    if cfg.w_dense > 0:
        if face_model is None:
            raise ValueError("loss.w_dense > 0 needs the face model to build the dense-landmark term")
        from msma.losses.dense import DenseLandmarkLoss

        dense = DenseLandmarkLoss.from_face_model(face_model)
    return FaceReconLoss(cfg, dense=dense)
