"""Builds the pieces of an experiment from its composed configuration, and reloads trained modules.

The entry points other commands use:

* :func:`load_module_from_checkpoint` — a trained :class:`~msma.module.FaceReconModule` from a ``.ckpt`` file
  (rebuilt from the resolved configuration stored in the checkpoint; ``torch.load(weights_only=True)``).
* :func:`build_untrained_module` — the zero-initialised network, whose output is exactly the mean face.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from msma.config import ExperimentConfig, from_container, to_container
from msma.module import CONFIG_KEY, FaceReconModule, OptimSettings


def _as_dataclass(node: Any, cls: type) -> Any:
    """A DictConfig node (or dataclass / dict) -> an instance of the dataclass ``cls``."""
    if isinstance(node, cls):
        return node
    if isinstance(node, DictConfig):
        obj = OmegaConf.to_object(node)
        if isinstance(obj, cls):
            return obj
        node = obj
    if isinstance(node, dict):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(node) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {unknown}")
        return cls(**node)
    raise TypeError(f"cannot turn {type(node).__name__} into {cls.__name__}")


def build_face_model(name: str = "ict", path: str | None = None) -> nn.Module:
    """Loads the face model (:func:`msma.face_model.load_face_model`) in eval mode."""
    from msma.face_model import load_face_model

    return load_face_model(name=name, path=path).eval()


def build_renderer(backend: str = "auto", antialias: bool = True) -> nn.Module:
    """A :class:`msma.render.renderer.MeshRenderer` with the given backend."""
    from msma.render.renderer import MeshRenderer

    return MeshRenderer(backend=backend, antialias=antialias)


def build_encoder(model_cfg: Any, face_model: nn.Module) -> nn.Module:
    """The encoder of ``model_cfg`` (:class:`msma.models.config.EncoderConfig`) in the face model's layout."""
    from msma.models import build_encoder_from_config
    from msma.models.config import EncoderConfig

    return build_encoder_from_config(_as_dataclass(model_cfg, EncoderConfig), face_model.layout)  # type: ignore[arg-type]


def build_loss(loss_cfg: Any) -> nn.Module:
    """:class:`msma.losses.total.FaceReconLoss` from a :class:`msma.losses.config.LossConfig`."""
    from msma.losses.config import LossConfig
    from msma.losses.total import FaceReconLoss

    return FaceReconLoss(_as_dataclass(loss_cfg, LossConfig))


def build_datamodule(cfg: DictConfig, face_model: nn.Module) -> Any:
    """The :class:`msma.data.datamodule.FaceDataModule` of ``cfg.data``."""
    from msma.data.config import DataConfig
    from msma.data.config import build_datamodule as _build

    return _build(_as_dataclass(cfg.data, DataConfig), face_model)


def optim_settings(cfg: DictConfig) -> OptimSettings:
    """:class:`OptimSettings` from ``cfg.optim``."""
    o = cfg.optim
    betas = tuple(float(b) for b in o.betas)
    if len(betas) != 2:
        raise ValueError(f"optim.betas must have two values, got {list(o.betas)}")
    return OptimSettings(
        lr=float(o.lr),
        betas=(betas[0], betas[1]),
        weight_decay=float(o.weight_decay),
        step_size=int(o.step_size),
        gamma=float(o.gamma),
        interval=str(o.interval),
    )


def build_module(cfg: DictConfig, face_model: nn.Module | None = None) -> FaceReconModule:
    """The :class:`FaceReconModule` of a composed experiment (face model loaded unless given)."""
    fm = face_model if face_model is not None else build_face_model(cfg.face_model.name, cfg.face_model.path)
    return FaceReconModule(
        encoder=build_encoder(cfg.model, fm),
        face_model=fm,
        renderer=build_renderer(cfg.renderer.backend, bool(cfg.renderer.antialias)),
        loss=build_loss(cfg.loss),
        optim=optim_settings(cfg),
        config=to_container(cfg),
    )


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


def load_module_from_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> FaceReconModule:
    """Rebuilds a trained :class:`FaceReconModule` from a checkpoint written by ``msma train``.

    The module is built from the resolved configuration stored in the checkpoint (pretrained-backbone loading
    and the identity loss, which needs ArcFace weights, are switched off: the module is for evaluation), the
    encoder weights are loaded strictly, and the module is returned in eval mode on ``map_location``. A
    checkpoint of msma's variants from before the authors' networks took the names ``msma_lka`` / ``mlanet``
    loads as ``msma_spatial`` / ``mlanet_timm`` (with a warning).

    Args:
        path: ``.ckpt`` file (``last.ckpt``, ``best-*.ckpt``, ``interrupted.ckpt``).
        map_location: device for the weights.
    """
    ckpt = load_checkpoint_file(path, map_location)
    cfg = from_container(ckpt[CONFIG_KEY])
    if "pretrained" in cfg.model:
        cfg.model.pretrained = False
    # Evaluation and inference never use the identity loss: do not require its ArcFace weights here.
    cfg.loss.use_identity = False
    renamed = legacy_encoder_name(str(cfg.model.name), ckpt["state_dict"])
    if renamed is not None:
        warnings.warn(
            f"{path}: written when '{cfg.model.name}' named msma's variant; loading it as '{renamed}' "
            f"(the name '{cfg.model.name}' is now the authors' network; set model.name={renamed} to silence this)",
            stacklevel=2,
        )
        cfg.model.name = renamed
    module = build_module(cfg)
    try:
        module.load_encoder_state(ckpt["state_dict"], strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"{path}: weights do not match the configuration stored in it ({err}). A checkpoint of msma's "
            "variants written before the authors' networks took the names msma_lka / mlanet loads as "
            "msma_spatial / mlanet_timm; a deep3d_r50 checkpoint from before November 2026 (timm backbone, "
            "ImageNet-normalised input) does not fit today's deep3d_r50 (torchvision layout, [0, 1] input) and "
            "must be retrained; an authors' checkpoint converts with 'msma convert'."
        ) from err
    return module.to(map_location).eval()


def build_untrained_module(
    face_model: str = "ict",
    face_model_path: str | None = None,
    encoder: str = "deep3d_r50",
    backbone: str = "resnet18",
    renderer_backend: str = "auto",
) -> FaceReconModule:
    """A zero-initialised (untrained) module: its prediction is exactly the mean face, frontal, centred.

    Args:
        face_model: ``"ict"`` or ``"bfm"``.
        face_model_path: optional face-model file/folder.
        encoder: encoder name (``"deep3d_r50"``, ``"msma_lka"``, ``"mlanet"``, ``"msma_spatial"``, ``"mlanet_timm"``).
        backbone: backbone (random init; the heads are zero so the weights do not matter).
        renderer_backend: ``"torch"``, ``"nvdiffrast"`` or ``"auto"``.
    """
    from msma.models.config import EncoderConfig

    base = OmegaConf.structured(ExperimentConfig)
    base.name = "untrained"
    fields = {f.name for f in dataclasses.fields(EncoderConfig)}
    model_cfg: dict[str, Any] = {"name": encoder, "backbone": backbone}
    for key, value in (("pretrained", False), ("allow_random_init", True)):
        if key in fields:
            model_cfg[key] = value
    cfg = OmegaConf.merge(
        base,
        {
            "model": model_cfg,
            "face_model": {"name": face_model, "path": face_model_path},
            "renderer": {"backend": renderer_backend},
        },
    )
    assert isinstance(cfg, DictConfig)
    return build_module(cfg).eval()
