"""What an experiment needs from the machine, checked before any work: every missing input at once.

Inputs checked (each only when the composed configuration uses it):

* face model ``bfm``: Deep3D's ``BFM_model_front.mat`` (or its source files) at ``face_model.path`` /
  ``$MSMA_BFM_DIR``;
* photos (``data.kind=folder``): ``data.root`` / ``$MSMA_DATA_ROOT`` with at least one image (mixed runs: every
  ``data.sources`` photo folder; 300W-LP / AFLW2000-3D sources: an existing folder);
* ImageNet weights (``model.pretrained``): ``model.pretrained_path`` / ``$MSMA_RESNET50_WEIGHTS``, torch hub's
  cache (the authors' networks) or timm's cache (msma's variants); a download counts as available only when
  the process is online;
* ArcFace weights (``loss.use_identity``): ``loss.identity_weights`` / ``$MSMA_ARCFACE_WEIGHTS``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MissingInput", "MissingInputsError", "check_inputs", "missing_inputs", "EMBEDDED_OVERRIDES"]

#: The documented override set that runs an experiment's network on the embedded default (ICT + synthetic, CPU).
EMBEDDED_OVERRIDES: tuple[str, ...] = ("+preset=embedded",)

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class MissingInput:
    """One input the experiment needs and the machine lacks.

    Attributes:
        what: the input (e.g. ``"BFM face model"``).
        problem: what is wrong (e.g. ``"face_model.path is not set and MSMA_BFM_DIR is empty"``).
        how: how to provide it.
    """

    what: str
    problem: str
    how: str

    def __str__(self) -> str:
        return f"- {self.what}: {self.problem}.\n    Provide it: {self.how}"


class MissingInputsError(RuntimeError):
    """An experiment cannot start; the message lists every missing input."""

    def __init__(self, name: str, missing: list[MissingInput]) -> None:
        self.missing = missing
        lines = [f"experiment {name!r} cannot start: {len(missing)} input(s) missing on this machine:"]
        lines += [str(m) for m in missing]
        lines.append(
            "Or run the same network on the embedded default (ICT-FaceKit + synthetic faces, CPU): "
            f"msma train --config-name {name} {' '.join(EMBEDDED_OVERRIDES)}  (docs/training.md)."
        )
        super().__init__("\n".join(lines))


def _bfm(path: Any) -> MissingInput | None:
    from msma.face_model.bfm import FRONT_MAT

    value = str(path) if path else os.environ.get("MSMA_BFM_DIR", "")
    how = (
        "put Deep3DFaceRecon's BFM/BFM_model_front.mat (or 01_MorphableModel.mat + Exp_Pca.bin and Deep3D's "
        "info files; licence from the University of Basel) in a folder and set MSMA_BFM_DIR=<folder> or "
        "face_model.path=<folder> (docs/face_model.md)"
    )
    if not value:
        return MissingInput("BFM face model", "face_model.path is not set and MSMA_BFM_DIR is empty", how)
    p = Path(value)
    if p.is_file():
        return None
    if p.is_dir() and ((p / FRONT_MAT).is_file() or (p / "01_MorphableModel.mat").is_file()):
        return None
    return MissingInput("BFM face model", f"{p} holds no {FRONT_MAT} / 01_MorphableModel.mat", how)


def _photos(root: Any) -> MissingInput | None:
    how = "set MSMA_DATA_ROOT=<folder of face photos> or data.root=<folder> (docs/data.md)"
    if not root:
        return MissingInput("training photos", "data.root is not set and MSMA_DATA_ROOT is empty", how)
    p = Path(str(root))
    if not p.is_dir():
        return MissingInput("training photos", f"{p} is not a folder", how)
    if not any(f.suffix.lower() in _IMAGE_SUFFIXES for f in p.rglob("*")):
        return MissingInput("training photos", f"{p} holds no images ({', '.join(_IMAGE_SUFFIXES)})", how)
    return None


def _folder(what: str, root: Any) -> MissingInput | None:
    how = "set the source's root (its environment variable, e.g. MSMA_300WLP_ROOT; docs/data.md)"
    if not root:
        return MissingInput(what, "the source's root is not set", how)
    if not Path(str(root)).is_dir():
        return MissingInput(what, f"{root} is not a folder", how)
    return None


def _imagenet(model: Any) -> MissingInput | None:
    from msma.models.registry import PAPER_ENCODERS

    if not bool(model.pretrained) and not model.pretrained_path:
        return None
    if model.pretrained_path:
        if Path(str(model.pretrained_path)).is_file():
            return None
        problem = f"model.pretrained_path {model.pretrained_path} does not exist"
    else:
        problem = ""
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if str(model.name) in PAPER_ENCODERS:
        from msma.models.resnet import TORCHVISION_WEIGHTS, find_imagenet_weights

        if not problem and find_imagenet_weights(str(model.backbone)) is not None:
            return None
        url = TORCHVISION_WEIGHTS.get(str(model.backbone), "")
        if not problem and not offline:
            from msma.models.backbone import host_unreachable

            if host_unreachable("download.pytorch.org") is None:
                return None  # downloaded at start
        import torch

        how = (
            f"download torchvision's {os.path.basename(url)} ({url}) into {Path(torch.hub.get_dir()) / 'checkpoints'}"
            ", or set MSMA_RESNET50_WEIGHTS=<file> / model.pretrained_path=<file>"
        )
        problem = problem or f"{os.path.basename(url)} is not in torch hub's cache and the process is offline"
    else:
        from msma.models.backbone import _cached_weights

        if not problem and _cached_weights(str(model.backbone)) is not None:
            return None
        if not problem and not offline:
            return None  # timm downloads it at start (fails fast with a clear error when it cannot)
        how = "give model.pretrained_path=<timm/torchvision weights file> or let timm download them online"
        problem = problem or f"timm weights of {model.backbone} are not cached and HF_HUB_OFFLINE is set"
    return MissingInput(f"ImageNet weights ({model.backbone})", problem, how + "; or model.pretrained=false")


def _arcface(loss: Any) -> MissingInput | None:
    if not bool(loss.use_identity) or float(loss.w_feat) == 0.0:
        return None
    how = (
        "download insightface's arcface_torch ms1mv3_arcface_r50_fp16/backbone.pth (the file Deep3DFaceRecon "
        "and MSMA use) and set MSMA_ARCFACE_WEIGHTS=<file> or loss.identity_weights=<file>; or "
        "loss.use_identity=false"
    )
    if not loss.identity_weights:
        return MissingInput(
            "ArcFace weights", "loss.identity_weights is not set and MSMA_ARCFACE_WEIGHTS is empty", how
        )
    if not Path(str(loss.identity_weights)).is_file():
        return MissingInput("ArcFace weights", f"{loss.identity_weights} does not exist", how)
    return None


def missing_inputs(cfg: Any) -> list[MissingInput]:
    """Every input ``cfg`` (a composed experiment) needs and this machine lacks, in a fixed order."""
    found: list[MissingInput | None] = []
    if str(cfg.face_model.name) == "bfm":
        found.append(_bfm(cfg.face_model.path))
    sources = list(cfg.data.get("sources") or [])
    if sources:
        # Mixed-source run: every photo folder source, then the test folder.
        for src in sources:
            if str(src.kind) == "folder":
                found.append(_photos(src.root))
            elif str(src.kind) in ("300w_lp", "aflw2000_3d"):
                found.append(_folder(f"{src.kind} data", src.root))
        if str(cfg.data.test_kind or "") == "folder":
            found.append(_photos(cfg.data.test_root))
    else:
        kinds = {str(cfg.data.kind), str(cfg.data.test_kind or "")}
        if "folder" in kinds:
            found.append(_photos(cfg.data.root if str(cfg.data.kind) == "folder" else cfg.data.test_root))
    found.append(_imagenet(cfg.model))
    found.append(_arcface(cfg.loss))
    return [m for m in found if m is not None]


def check_inputs(cfg: Any) -> None:
    """Raises :class:`MissingInputsError` listing every missing input of ``cfg``; returns when all are there."""
    missing = missing_inputs(cfg)
    if missing:
        raise MissingInputsError(str(cfg.name), missing)
