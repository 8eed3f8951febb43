"""Building the training module, and the second checkpoint entry point: everything, for resuming.

Inference and evaluation use :func:`msma.checkpoint.load_inference_model` (no losses) instead.
"""

from __future__ import annotations

from pathlib import Path

import torch

from msma.checkpoint import MISMATCH_HELP, checkpoint_config, load_checkpoint_file
from msma.config import ExperimentConfig, to_plain_dict
from msma.data.input_augment import build_input_augment
from msma.face_model.model import FaceModel
from msma.training.module import FaceReconModule


def build_module(cfg: ExperimentConfig, face_model: FaceModel | None = None) -> FaceReconModule:
    """The :class:`FaceReconModule` of an experiment (face model loaded unless given), losses included."""
    from msma.builders import build_encoder, build_face_model, build_loss, build_renderer

    fm = face_model if face_model is not None else build_face_model(cfg.face_model.name, cfg.face_model.path)
    return FaceReconModule(
        encoder=build_encoder(cfg.model, fm.layout),
        face_model=fm,
        renderer=build_renderer(cfg.renderer.backend, cfg.renderer.antialias),
        loss=build_loss(cfg.loss, fm),
        optim=cfg.optim,
        config=to_plain_dict(cfg),
        input_augment=build_input_augment(cfg.data.randconv, cfg.data.grayscale),
        augment_seed=cfg.data.seed,
    )


def load_training_module(path: str | Path, map_location: str | torch.device = "cpu") -> FaceReconModule:
    """The whole training module of a checkpoint (losses included: the identity loss needs its weights here).

    For fine-tuning or inspection; ``msma train resume=<ckpt>`` restores optimiser, scheduler, loops and RNG
    states on top of this through Lightning.
    """
    ckpt = load_checkpoint_file(path, map_location)
    module = build_module(checkpoint_config(ckpt, path))
    try:
        module.load_encoder_state(ckpt["state_dict"], strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"{path}: weights do not match the configuration stored in it ({err}). {MISMATCH_HELP}"
        ) from err
    return module.to(map_location).eval()
