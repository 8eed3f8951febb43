"""timm feature backbones with offline-safe pretrained weights.

Any timm model that supports ``features_only=True`` works; its ``feature_info`` gives the channels and
strides of the selected stages. Pretrained weights come from (in order): a local file ``pretrained_path``;
timm's caches (the Hugging Face hub cache or torch hub's ``checkpoints/``); a download through timm unless the
process is offline (``HF_HUB_OFFLINE``) or the download host does not accept a single quick connection. When none works, :func:`create_backbone` raises a
:class:`PretrainedWeightsError` at once, unless ``allow_random_init`` (then it warns and keeps random weights).
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import timm
import torch
from torch import Tensor, nn

__all__ = ["FeatureBackbone", "PretrainedWeightsError", "create_backbone", "load_weights_file"]

#: ImageNet statistics, the fallback when a timm model has no pretrained config.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class PretrainedWeightsError(RuntimeError):
    """Pretrained backbone weights were requested but could not be loaded."""


def _is_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE",))


def _pretrained_cfg(name: str) -> Any:
    """timm's default pretrained config of ``name`` (None for unknown names or models without weights)."""
    try:
        return timm.models.get_pretrained_cfg(name)
    except Exception:
        return None


def _download_host(name: str) -> str | None:
    """Host timm would download ``name``'s default weights from (HF hub endpoint or the weights URL)."""
    cfg = _pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    url = cfg.url[0] if isinstance(cfg.url, tuple) else cfg.url
    return urlparse(url).hostname if url else None


def host_unreachable(host: str, timeout_s: float = 3.0) -> str | None:
    """None when a TCP connection to ``host``:443 opens within ``timeout_s``, else the reason (one attempt,
    so an offline machine fails in seconds instead of going through the hub client's retries)."""
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return None
    except OSError as err:
        return f"cannot reach {host}: {err}"


def load_weights_file(path: str | Path) -> dict[str, Tensor]:
    """Reads a state dict from ``.safetensors`` or a torch file (``weights_only=True``: no unpickling).

    Lightning/timm style wrappers (``state_dict``, ``model``, ``state_dict_ema``) are unwrapped and a leading
    ``module.`` (DataParallel) prefix is removed.

    Raises:
        PretrainedWeightsError: the file is missing, unreadable or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(f"pretrained_path {str(path)!r}: no such file")
    try:
        if path.suffix == ".safetensors":
            import safetensors.torch

            obj: Any = safetensors.torch.load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise PretrainedWeightsError(f"pretrained_path {str(path)!r}: cannot read weights ({err})") from err
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise PretrainedWeightsError(f"pretrained_path {str(path)!r}: not a state dict of tensors")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in obj.items()}


def _cached_weights(name: str) -> Path | None:
    """Path of ``name``'s default pretrained weights in the HF hub or torch hub cache, if present."""
    cfg = _pretrained_cfg(name)
    if cfg is None:
        return None
    cfg_dict = cfg.to_dict()
    hub_id = cfg_dict.get("hf_hub_id")
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache

            filenames = [cfg_dict["hf_hub_filename"]] if cfg_dict.get("hf_hub_filename") else []
            for filename in [*filenames, "model.safetensors", "pytorch_model.bin"]:
                found = try_to_load_from_cache(hub_id, filename)
                if isinstance(found, str) and Path(found).is_file():
                    return Path(found)
        except ImportError:
            pass
    url = cfg_dict.get("url")
    if url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        if candidate.is_file():
            return candidate
    return None


def _create(name: str, out_indices: Sequence[int], **kwargs: Any) -> nn.Module:
    try:
        return timm.create_model(name, features_only=True, out_indices=tuple(out_indices), **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err) or "features_only not implemented" in str(err):
            raise ValueError(f"backbone {name!r}: not a timm model with features_only support ({err})") from err
        raise


def _load_state_dict(name: str, out_indices: Sequence[int], state_dict: dict[str, Tensor], source: str) -> nn.Module:
    """Features model with ``state_dict`` loaded (full classifier checkpoint or features-only state dict)."""
    try:
        # timm applies the architecture's checkpoint filter and drops the classifier for features_only.
        return _create(name, out_indices, pretrained=True, pretrained_cfg_overlay={"state_dict": state_dict})
    except (RuntimeError, KeyError, ValueError) as full_err:
        model = _create(name, out_indices, pretrained=False)
        own = model.state_dict()
        missing = sorted(set(own) - set(state_dict))
        bad_shape = sorted(k for k in own if k in state_dict and own[k].shape != state_dict[k].shape)
        if missing or bad_shape:
            raise PretrainedWeightsError(
                f"{source}: weights do not fit backbone {name!r} "
                f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, shape mismatch {bad_shape[:5]}; "
                f"timm said: {full_err})"
            ) from full_err
        model.load_state_dict({k: state_dict[k] for k in own})
        return model


class FeatureBackbone(nn.Module):
    """A timm ``features_only`` model returning the selected stages.

    Attributes:
        name: timm model name.
        channels: channels of each returned feature map.
        reductions: stride (input pixels per feature pixel) of each returned map.
        mean, std: RGB normalisation of the pretrained weights (timm ``pretrained_cfg``), for [0, 1] images.
        body: the timm features model (its modules keep timm's names, e.g. ``layer1`` for ResNets).
    """

    def __init__(self, body: nn.Module, name: str) -> None:
        super().__init__()
        self.body = body
        self.name = name
        info: Any = body.feature_info
        self.channels: tuple[int, ...] = tuple(int(c) for c in info.channels())
        self.reductions: tuple[int, ...] = tuple(int(r) for r in info.reduction())
        cfg = getattr(body, "pretrained_cfg", None) or {}
        mean = tuple(cfg.get("mean", IMAGENET_MEAN))
        std = tuple(cfg.get("std", IMAGENET_STD))
        if len(mean) != 3 or len(std) != 3:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        self.mean: tuple[float, ...] = tuple(float(m) for m in mean)
        self.std: tuple[float, ...] = tuple(float(s) for s in std)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: (B, 3, H, W) normalised image -> one (B, channels[i], H / reductions[i], W / reductions[i]) per stage."""
        return list(self.body(x))


def create_backbone(
    name: str = "resnet50",
    out_indices: Sequence[int] = (-1,),
    pretrained: bool = False,
    pretrained_path: str | None = None,
    allow_random_init: bool = False,
) -> FeatureBackbone:
    """Builds a timm feature backbone.

    Args:
        name: timm model name (e.g. ``resnet50``, ``resnet18``, ``efficientnet_b0``).
        out_indices: feature levels to return (timm ``out_indices``; negative counts from the deepest).
        pretrained: load ImageNet weights: from ``pretrained_path`` if given, else timm's cache, else a download
            (skipped when ``HF_HUB_OFFLINE`` is set).
        pretrained_path: local ``.safetensors`` / ``.pth`` file (a timm/torchvision classifier checkpoint or a
            features-only state dict). Implies ``pretrained``.
        allow_random_init: when pretrained weights cannot be had, warn and continue with random weights
            instead of raising.

    Raises:
        PretrainedWeightsError: pretrained weights requested, not available, and ``allow_random_init`` is false.
        ValueError: ``name`` is not a timm model with ``features_only`` support.
    """
    if pretrained_path:
        sd = load_weights_file(pretrained_path)
        return FeatureBackbone(_load_state_dict(name, out_indices, sd, f"pretrained_path {pretrained_path!r}"), name)
    if not pretrained:
        return FeatureBackbone(_create(name, out_indices, pretrained=False), name)

    cached = _cached_weights(name)
    if cached is not None:
        sd = load_weights_file(cached)
        return FeatureBackbone(_load_state_dict(name, out_indices, sd, f"cached weights {str(cached)!r}"), name)
    reason = "no cached weights and HF_HUB_OFFLINE is set"
    host = _download_host(name)
    unreachable = None if _is_offline() or host is None else host_unreachable(host)
    if unreachable:
        reason = f"no cached weights; {unreachable}"
    elif not _is_offline():
        try:
            return FeatureBackbone(_create(name, out_indices, pretrained=True), name)
        except ValueError:
            raise
        except Exception as err:
            reason = f"download failed: {type(err).__name__}: {err}"
    message = (
        f"pretrained weights for backbone {name!r} are not available ({reason}). "
        "Give a local weights file with pretrained_path=..., or set allow_random_init=true to train from "
        "random initialisation, or pretrained=false (on the msma train command line: model.pretrained_path=..., "
        "model.allow_random_init=true, model.pretrained=false)."
    )
    if not allow_random_init:
        raise PretrainedWeightsError(message)
    warnings.warn(message + " Continuing with random weights (allow_random_init=true).", stacklevel=2)
    return FeatureBackbone(_create(name, out_indices, pretrained=False), name)
