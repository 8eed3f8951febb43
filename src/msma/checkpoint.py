"""Checkpoints written by ``msma train``: reading them, and the inference entry point.

Two entry points load a checkpoint, and only two:

* :func:`load_inference_model` (``msma reconstruct``, ``msma eval``, the notebooks, ``msma.Reconstructor``):
  a :class:`~msma.pipeline.FacePipeline`, i.e. encoder + face model + renderer, built from the configuration
  stored in the checkpoint. It never builds a loss, so a checkpoint trained elsewhere with the identity loss
  (whose face-recognition weights are not on this machine) loads.
* :func:`msma.training.checkpoint.load_training_module`: the whole training module (losses included), for
  resuming or fine-tuning.

A checkpoint of msma's variants from before the authors' networks took the names ``msma_lka`` / ``mlanet`` loads
as ``msma_spatial`` / ``mlanet_timm`` (with a warning). A checkpoint holds the encoder's weights only (``state_dict`` keys ``encoder.*``; the face model, renderer and
loss networks are rebuilt from the configuration) and the resolved experiment configuration under
:data:`CONFIG_KEY`. Files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf.errors import OmegaConfBaseException

from msma.config import ExperimentConfig, experiment_from_dict
from msma.pipeline import FacePipeline

#: Checkpoint key holding the resolved experiment configuration (a plain dict of primitives).
CONFIG_KEY = "msma_config"
#: Sub-modules whose tensors are rebuilt from the configuration and therefore not stored in checkpoints.
NON_PERSISTENT_PREFIXES: tuple[str, ...] = ("face_model.", "renderer.", "loss.")
#: The state-dict prefix of the trained weights.
ENCODER_PREFIX = "encoder."


def load_checkpoint_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Reads a checkpoint safely (``weights_only=True``) and checks that it is an msma checkpoint.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable msma checkpoint (the message names the file and the problem).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"{p}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{p}: not a Lightning checkpoint (no 'state_dict')")
    if CONFIG_KEY not in ckpt:
        raise ValueError(f"{p}: no '{CONFIG_KEY}' entry: not written by msma train")
    return ckpt


def checkpoint_config(ckpt: dict[str, Any], path: str | Path, for_inference: bool = True) -> ExperimentConfig:
    """The typed experiment configuration stored in a checkpoint.

    Args:
        ckpt: what :func:`load_checkpoint_file` returned.
        path: the file (for messages).
        for_inference: switch off pretrained-backbone loading (the trained weights replace them).

    Raises:
        ValueError: the stored configuration does not fit this version's schema; the message names the key
            and how to convert the checkpoint.
    """
    try:
        cfg = experiment_from_dict(dict(ckpt[CONFIG_KEY]))
    except (OmegaConfBaseException, TypeError, ValueError) as err:
        raise ValueError(
            f"{path}: its stored configuration does not fit this msma version ({err}). Convert it by editing the "
            f"'{CONFIG_KEY}' dict of the checkpoint (torch.load(..., weights_only=True), fix or drop the named key, "
            "torch.save) or load it with the msma version that wrote it."
        ) from err
    if for_inference and hasattr(cfg.model, "pretrained"):
        cfg.model = dataclasses.replace(cfg.model, pretrained=False)
    return _renamed_legacy(cfg, dict(ckpt["state_dict"]), path)


#: Checkpoints from before the authors' networks took these names: (name, key prefix only the old variant has).
_LEGACY_NAMES: dict[str, tuple[str, str]] = {
    "msma_lka": ("msma_spatial", "encoder.proj."),
    "mlanet": ("mlanet_timm", "encoder.proj."),
}


def legacy_encoder_name(name: str, state_dict: dict[str, Any]) -> str | None:
    """The variant name an old checkpoint's encoder has now (``msma_lka`` -> ``msma_spatial``, ``mlanet`` ->
    ``mlanet_timm``) when its weights are those of the variant, else None."""
    if name in _LEGACY_NAMES:
        new, prefix = _LEGACY_NAMES[name]
        if any(k.startswith(prefix) for k in state_dict):
            return new
    return None


def _renamed_legacy(cfg: ExperimentConfig, state_dict: dict[str, Any], path: str | Path) -> ExperimentConfig:
    renamed = legacy_encoder_name(cfg.model.name, state_dict)
    if renamed is None:
        return cfg
    warnings.warn(
        f"{path}: written when '{cfg.model.name}' named msma's variant; loading it as '{renamed}' "
        f"(the name '{cfg.model.name}' is now the authors' network; set model.name={renamed} to silence this)",
        stacklevel=3,
    )
    cfg.model = dataclasses.replace(cfg.model, name=renamed)
    return cfg


#: Appended to a weight-mismatch error: what changed and how to convert.
MISMATCH_HELP = (
    "A checkpoint of msma's variants written before the authors' networks took the names msma_lka / mlanet loads "
    "as msma_spatial / mlanet_timm; a deep3d_r50 checkpoint from before November 2026 (timm backbone, "
    "ImageNet-normalised input) does not fit today's deep3d_r50 (torchvision layout, [0, 1] input) and must be "
    "retrained; an authors' checkpoint converts with 'msma convert'."
)


def encoder_state(state_dict: dict[str, torch.Tensor], path: str | Path) -> dict[str, torch.Tensor]:
    """The encoder's weights of a checkpoint ``state_dict`` (prefix removed); other keys must be rebuilt ones."""
    unknown = [k for k in state_dict if not k.startswith((ENCODER_PREFIX, *NON_PERSISTENT_PREFIXES))]
    if unknown:
        raise ValueError(f"{path}: unexpected weights in the checkpoint: {unknown[:5]}")
    return {k[len(ENCODER_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(ENCODER_PREFIX)}


def build_pipeline(cfg: ExperimentConfig, renderer_backend: str | None = None) -> FacePipeline:
    """Encoder + face model + renderer of an experiment configuration (no loss)."""
    from msma.builders import build_encoder, build_face_model, build_renderer
    from msma.config import to_plain_dict

    face_model = build_face_model(cfg.face_model.name, cfg.face_model.path)
    renderer = build_renderer(renderer_backend or cfg.renderer.backend, cfg.renderer.antialias)
    return FacePipeline(build_encoder(cfg.model, face_model.layout), face_model, renderer, to_plain_dict(cfg))


def load_inference_model(
    path: str | Path, map_location: str | torch.device = "cpu", renderer_backend: str | None = None
) -> FacePipeline:
    """The trained network of a checkpoint written by ``msma train``, for inference and evaluation.

    Builds the encoder, the face model and the renderer from the stored configuration (never a loss), loads the
    encoder's weights strictly and returns the pipeline in eval mode on ``map_location``.

    Args:
        path: ``.ckpt`` file (``last.ckpt``, ``best-*.ckpt``, ``interrupted.ckpt``).
        map_location: device.
        renderer_backend: override the stored renderer backend (``"torch"``, ``"nvdiffrast"``, ``"auto"``).
    """
    ckpt = load_checkpoint_file(path, map_location)
    cfg = checkpoint_config(ckpt, path)
    model = build_pipeline(cfg, renderer_backend)
    try:
        model.encoder.load_state_dict(encoder_state(ckpt["state_dict"], path), strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"{path}: weights do not match the configuration stored in it ({err}). {MISMATCH_HELP}"
        ) from err
    return model.to(map_location).eval()


def untrained_config(
    face_model: str = "ict",
    face_model_path: str | None = None,
    encoder: str = "deep3d_r50",
    backbone: str = "resnet18",
    renderer_backend: str = "auto",
) -> ExperimentConfig:
    """The configuration of the untrained network (``msma eval/reconstruct --ckpt mean``).

    Its held-out split is the synthetic test split at 224 px (``data.test_kind="synthetic"``).
    """
    from msma.config import FaceModelConfig, RendererConfig
    from msma.data.config import DataConfig
    from msma.models.config import EncoderConfig

    fields = {f.name for f in dataclasses.fields(EncoderConfig)}
    model_kwargs: dict[str, Any] = {"name": encoder, "backbone": backbone}
    model_kwargs.update({k: v for k, v in (("pretrained", False), ("allow_random_init", True)) if k in fields})
    return ExperimentConfig(
        name="untrained",
        model=EncoderConfig(**model_kwargs),
        face_model=FaceModelConfig(face_model, face_model_path),
        renderer=RendererConfig(backend=renderer_backend),
        data=DataConfig(test_kind="synthetic"),
    )


def untrained_pipeline(
    face_model: str = "ict",
    face_model_path: str | None = None,
    encoder: str = "deep3d_r50",
    backbone: str = "resnet18",
    renderer_backend: str = "auto",
) -> FacePipeline:
    """A zero-initialised (untrained) network: its prediction is exactly the mean face, frontal, centred.

    Args:
        face_model: ``"ict"`` or ``"bfm"``.
        face_model_path: optional face-model file/folder.
        encoder: encoder name (``"deep3d_r50"``, ``"msma_lka"``, ``"mlanet"``).
        backbone: timm backbone (random init; the heads are zero so the weights do not matter).
        renderer_backend: ``"torch"``, ``"nvdiffrast"`` or ``"auto"``.
    """
    cfg = untrained_config(face_model, face_model_path, encoder, backbone, renderer_backend)
    return build_pipeline(cfg).eval()
