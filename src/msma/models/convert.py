"""Maps the authors' checkpoints (``danielle20010405/MLANet-MSMT``, Deep3DFaceRecon_pytorch) to msma's encoders.

Their training code saves ``{'net_recon': ReconNetWrapper.state_dict(), ...}`` (``models/base_model.py``,
``save_networks``). Key names there (with an optional DataParallel ``module.`` prefix):

* backbone: ``backbone.conv1``, ``backbone.bn1``, ``backbone.layer{1-4}.{i}.{conv,bn}{1-3}``,
  ``backbone.layer{1-4}.0.downsample.{0,1}`` - msma's ``backbone.*`` unchanged; MLANet's coordinate attention
  ``...bottle_atten.{conv1,bn1,conv_h,conv_w}`` -> ``...attn.*``.
* MSMA (``multifusion-multitask-MLKA.py``): ``backbone.fuse_layers.*`` -> ``fuse_layers.*``;
  ``backbone.conv1x1_adjust.k`` -> ``adjust.k``; ``backbone.conv1x1_2048.k`` -> ``to_readout.k``;
  ``backbone.atten_done.k.{norm, scale, proj_first.0, proj_last.0, LKA3/LKA5/LKA7.m, X3/X5/X7}`` ->
  ``mlka.k.{norm.norm, scale, proj_first, proj_last, lkas.0/1/2.m, gates.0/1/2}``; heads ``id_layer``,
  ``exp_layer``, ``tex_layer``, ``angle_layer``, ``gamma_layer``, ``trans_layer``, ``depth_layer``.
* MLANet (``bottle_co-downaff.py``) and Deep3D: ``backbone.fusion.k`` -> ``aff.k``; ``backbone.downsample.k``
  -> ``down.k``; heads ``final_layers.0-6`` (id, exp, tex, angles, gamma, tx/ty, tz).
* Heads: 1x1 conv weights (out, in, 1, 1) -> linear weights (out, in).
* Dropped (built by the reference, never run): MSMA's per-bottleneck ``bottle_atten`` (MS_CAM), MLANet's
  ``backbone.layer_atten.*`` and ``backbone.channel_change.*``; any ``fc``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

__all__ = ["AUTHORS_NETWORKS", "convert_authors_state_dict", "unwrap_authors_checkpoint"]

#: msma encoder names whose authors' checkpoints can be converted.
AUTHORS_NETWORKS: tuple[str, ...] = ("msma_lka", "mlanet", "deep3d_r50")

_MSMA_HEADS = {
    "id_layer": "id",
    "exp_layer": "exp",
    "tex_layer": "tex",
    "angle_layer": "angles",
    "gamma_layer": "sh",
    "trans_layer": "txy",
    "depth_layer": "tz",
}
_FINAL_LAYERS = ("id", "exp", "tex", "angles", "sh", "txy", "tz")
_MLKA_NAMES = {
    "norm.weight": "norm.norm.weight",
    "norm.bias": "norm.norm.bias",
    "scale": "scale",
    "proj_first.0.weight": "proj_first.weight",
    "proj_first.0.bias": "proj_first.bias",
    "proj_last.0.weight": "proj_last.weight",
    "proj_last.0.bias": "proj_last.bias",
}
_MLKA_GROUPS = {"LKA3": "lkas.0", "LKA5": "lkas.1", "LKA7": "lkas.2", "X3": "gates.0", "X5": "gates.1", "X7": "gates.2"}


def unwrap_authors_checkpoint(obj: Mapping[str, object]) -> dict[str, Tensor]:
    """``{'net_recon': state_dict, ...}`` (their checkpoint files) or a bare state dict -> the state dict,
    without a leading ``module.`` (DataParallel)."""
    inner = obj.get("net_recon", obj)
    if not isinstance(inner, Mapping):
        raise ValueError("not a state dict: 'net_recon' is not a mapping")
    out: dict[str, Tensor] = {}
    for k, v in inner.items():
        if not isinstance(v, Tensor):
            raise ValueError(f"not a state dict of tensors: {k!r} holds a {type(v).__name__}")
        out[k[len("module.") :] if k.startswith("module.") else k] = v
    return out


def _dead(key: str, network: str) -> bool:
    if key.startswith(("fc.", "backbone.fc.")):
        return True
    if network == "msma_lka":
        return ".bottle_atten." in key
    if network == "mlanet":
        return key.startswith(("backbone.layer_atten.", "backbone.channel_change."))
    return False


def _head(name: str, key: str, value: Tensor) -> tuple[str, Tensor]:
    param = key.rsplit(".", 1)[1]
    if param == "weight" and value.ndim == 4:
        value = value.flatten(1)
    return f"heads.{name}.{param}", value


def _map_key(key: str, value: Tensor, network: str) -> tuple[str, Tensor]:
    first = key.split(".", 1)[0]
    if network == "msma_lka" and first in _MSMA_HEADS:
        return _head(_MSMA_HEADS[first], key, value)
    m = re.fullmatch(r"final_layers\.(\d)\.(weight|bias)", key)
    if m and network in ("mlanet", "deep3d_r50"):
        return _head(_FINAL_LAYERS[int(m.group(1))], key, value)
    if not key.startswith("backbone."):
        raise ValueError(f"unknown key {key!r} for {network}")
    rest = key[len("backbone.") :]
    if network == "msma_lka":
        for theirs, ours in (
            ("fuse_layers.", "fuse_layers."),
            ("conv1x1_adjust.", "adjust."),
            ("conv1x1_2048.", "to_readout."),
        ):
            if rest.startswith(theirs):
                return ours + rest[len(theirs) :], value
        m = re.fullmatch(r"atten_done\.(\d)\.(.+)", rest)
        if m:
            idx, tail = m.groups()
            if tail in _MLKA_NAMES:
                return f"mlka.{idx}.{_MLKA_NAMES[tail]}", value
            group, _, sub = tail.partition(".")
            if group in _MLKA_GROUPS:
                return f"mlka.{idx}.{_MLKA_GROUPS[group]}.{sub}", value
            raise ValueError(f"unknown MLKA key {key!r}")
    if network == "mlanet":
        for theirs, ours in (("fusion.", "aff."), ("downsample.", "down.")):
            if rest.startswith(theirs):
                return ours + rest[len(theirs) :], value
        rest = rest.replace(".bottle_atten.", ".attn.")
    return "backbone." + rest, value


def convert_authors_state_dict(state: Mapping[str, Tensor], network: str) -> dict[str, Tensor]:
    """The authors' ``net_recon`` state dict -> the state dict of msma's encoder ``network``.

    Args:
        state: their keys (see the module docstring); dead modules are dropped.
        network: ``"msma_lka"``, ``"mlanet"`` or ``"deep3d_r50"``.

    Returns:
        Keys of :func:`msma.models.build_encoder` ``(network, layout)``'s ``state_dict()`` (without the
        ``encoder.`` prefix a Lightning checkpoint adds).

    Raises:
        ValueError: unknown network or a key the mapping does not know (naming it).
    """
    if network not in AUTHORS_NETWORKS:
        raise ValueError(f"no converter for {network!r}; available: {', '.join(AUTHORS_NETWORKS)}")
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if _dead(key, network):
            continue
        new_key, new_value = _map_key(key, value, network)
        if new_key in out:
            raise ValueError(f"two keys map to {new_key!r} (second: {key!r})")
        out[new_key] = new_value
    return out


def convert_checkpoint_file(
    source: str, output: str, network: str, overrides: list[str] | None = None
) -> dict[str, object]:
    """Writes an msma checkpoint (``msma eval --ckpt OUTPUT``) from the authors' checkpoint file.

    The configuration stored with it is the experiment ``network`` composed with ``overrides`` (default: the
    paper experiment, BFM layout). The converted weights are loaded strictly into that encoder first, so a
    file that does not fit fails here, naming the keys.

    Args:
        source: their ``epoch_*.pth`` (``{'net_recon': ...}``) or a bare state dict (read with
            ``weights_only=True``).
        output: the ``.ckpt`` to write.
        network: ``msma_lka`` | ``mlanet`` | ``deep3d_r50``.
        overrides: Hydra overrides of the stored configuration (e.g. ``face_model.path=...``).

    Returns:
        The checkpoint dict written.
    """
    import dataclasses
    from pathlib import Path

    import torch

    from msma.checkpoint import CONFIG_KEY
    from msma.config import compose_experiment, to_container, to_typed
    from msma.info import layout_of
    from msma.models.config import build_encoder_from_config
    from msma.utils.files import atomic_write

    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: not a checkpoint dict")
    try:
        state = convert_authors_state_dict(unwrap_authors_checkpoint(raw), network)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    cfg = compose_experiment(network, list(overrides or []))
    model_cfg = dataclasses.replace(to_typed(cfg).model, pretrained=False)
    encoder = build_encoder_from_config(model_cfg, layout_of(str(cfg.face_model.name)))
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: converted weights do not fit msma's {network}: {err}") from err
    cfg.model.pretrained = False
    ckpt: dict[str, object] = {
        "state_dict": {f"encoder.{k}": v for k, v in encoder.state_dict().items()},
        CONFIG_KEY: to_container(cfg),
        "msma_converted_from": str(path),
    }
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output, lambda tmp: torch.save(ckpt, tmp))  # an interrupted write leaves no partial checkpoint
    return ckpt
