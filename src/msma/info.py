"""What an experiment trains and what it needs (the library behind ``msma info``, :mod:`msma.cli.info`).

Reports the network's trainable parameters (total and per part: backbone, fusion, projection, attention,
heads), its forward FLOPs for one image at the experiment's size (``torch.utils.flop_counter``, counted on
the meta device: no memory for activations, no compute; a multiply-add counts as 2 FLOPs), the coefficient
layout, the face model, the data source and the inputs missing on this machine (:mod:`msma.preflight`).
The BFM layout (Deep3D: id 80, exp 64, tex 80, angles 3, SH 27, trans 3 = 257) is known without the BFM
files; ICT-FaceKit's comes from :func:`msma.face_model.ict.ict_layout`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from msma.face_model.params import CoeffLayout

__all__ = ["count_flops", "experiment_info", "info_text", "layout_of", "parameter_parts"]

#: Deep3DFaceRecon's BFM layout (257 coefficients).
BFM_LAYOUT = CoeffLayout(80, 64, 80)


def layout_of(face_model: str) -> CoeffLayout:
    """Coefficient layout of a face model by name, without loading its files."""
    if face_model == "bfm":
        return BFM_LAYOUT
    if face_model == "ict":
        from msma.face_model.ict import ict_layout

        return ict_layout()
    raise ValueError(f"unknown face model {face_model!r}; expected 'bfm' or 'ict'")


def parameter_parts(encoder: nn.Module) -> dict[str, int]:
    """Trainable parameters per part (the encoder's ``PARTS``); attention modules inside the backbone
    (``.attn.``, MLANet's coordinate attention) count as ``attention``. Anything else: ``other``."""
    parts: dict[str, tuple[str, ...]] = dict(
        getattr(encoder, "PARTS", {"backbone": ("backbone",), "heads": ("heads",)})
    )
    owner = {child: part for part, children in parts.items() for child in children}
    counts: dict[str, int] = dict.fromkeys(parts, 0)
    for name, p in encoder.named_parameters():
        if not p.requires_grad:
            continue
        top = name.split(".", 1)[0]
        part = owner.get(top, "other")
        if part == "backbone" and ".attn." in name:
            part = "attention"
        counts[part] = counts.get(part, 0) + p.numel()
    return counts


def count_flops(encoder: nn.Module, image_size: int) -> int:
    """Forward FLOPs of ``encoder`` on one (1, 3, S, S) image (meta device; the encoder is not changed)."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(encoder).to("meta").eval()
    x = torch.empty(1, 3, image_size, image_size, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(x)
    return int(counter.get_total_flops())


def experiment_info(cfg: Any, flops: bool = True) -> dict[str, Any]:
    """The report of a composed experiment (see the module docstring); ``params`` is the total (int)."""
    import dataclasses

    from msma.config import to_typed
    from msma.models.config import build_encoder_from_config
    from msma.preflight import missing_inputs

    layout = layout_of(str(cfg.face_model.name))
    model_cfg = dataclasses.replace(to_typed(cfg).model, pretrained=False, pretrained_path=None)
    with torch.device("meta"):
        encoder = build_encoder_from_config(model_cfg, layout)
    params = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    size = int(cfg.data.image_size)
    info: dict[str, Any] = {
        "experiment": str(cfg.name),
        "encoder": str(cfg.model.name),
        "backbone": str(cfg.model.backbone),
        "params": int(params),
        "params_by_part": parameter_parts(encoder),
        "image_size": size,
        "forward_flops": count_flops(encoder, size) if flops else None,
        "input": "ImageNet-normalised RGB" if getattr(encoder, "input_normalized", False) else "[0, 1] RGB",
        "face_model": str(cfg.face_model.name),
        "face_model_path": cfg.face_model.path,
        "layout": {**layout.sizes, "total": layout.total},
        "data": {
            "kind": str(cfg.data.kind),
            "root": cfg.data.root,
            "test_kind": cfg.data.test_kind,
            "sources": [
                {"kind": str(s.kind), "name": s.name, "root": s.root, "weight": s.weight}
                for s in (cfg.data.get("sources") or [])
            ],
        },
        "precision": str(cfg.trainer.precision),
        "missing": [{"what": m.what, "problem": m.problem, "how": m.how} for m in missing_inputs(cfg)],
    }
    return info


def info_text(info: dict[str, Any]) -> str:
    lines = [f"experiment {info['experiment']}: encoder {info['encoder']} ({info['backbone']}, input {info['input']})"]
    lines.append(f"  trainable parameters: {info['params']:,}")
    for part, n in info["params_by_part"].items():
        lines.append(f"    {part:<11s} {n:>13,}")
    if info["forward_flops"] is not None:
        lines.append(f"  forward FLOPs at {info['image_size']} px: {info['forward_flops'] / 1e9:.2f} G (1 image)")
    lay = info["layout"]
    lines.append(
        f"  coefficients: {lay['total']} (id {lay['id']}, exp {lay['exp']}, tex {lay['tex']}, angles {lay['angles']}, "
        f"sh {lay['sh']}, trans {lay['trans']}); face model {info['face_model']}"
        + (f" ({info['face_model_path']})" if info["face_model_path"] else "")
    )
    data = info["data"]
    if data.get("sources"):
        mix = ", ".join(
            f"{s['name'] or s['kind']} ({s['kind']}{', ' + str(s['root']) if s['root'] else ''}"
            f"{', weight ' + str(s['weight']) if s['weight'] is not None else ''})"
            for s in data["sources"]
        )
        lines.append(f"  data: mixed sources: {mix}; precision {info['precision']}")
    else:
        lines.append(
            f"  data: {data['kind']}"
            + (f" ({data['root']})" if data["root"] else "")
            + f"; precision {info['precision']}"
        )
    if info["missing"]:
        lines.append(f"  missing on this machine ({len(info['missing'])}):")
        lines += [f"    - {m['what']}: {m['problem']}. Provide it: {m['how']}" for m in info["missing"]]
    else:
        lines.append("  nothing missing: ready to train")
    return "\n".join(lines)
