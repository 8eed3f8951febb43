"""Where a network's landmark error comes from, on its synthetic held-out split: the 68-point NME with one
coefficient group at a time replaced by the ground truth.

The split is the run's own (the one of its ``metrics.json`` and ``msma eval --data synthetic``). For every face:
the NME of the network's coefficients; of the same coefficients with the ground truth's angles, yaw only,
translation (x, y), translation z, pose (angles + translation), identity, expression or shape (identity +
expression) put in; of the flip-averaged pose and of the flip average of every group
(:func:`msma.pipeline.predict_params` with the face model's :class:`~msma.face_model.mirror.CoefficientMirror`,
what ``msma reconstruct`` uses); and of the mean face (the untrained network). NME: mean 68-point distance / sqrt(w * h) of the ground-truth
box, in % (as the held-out evaluator). A substitution that lowers the NME a lot names the group whose error
dominates; one that raises it means the network's other groups compensate that group's error.

    python benchmarks/error_budget.py --ckpt runs/quickstart/<stamp>/checkpoints/best-*.ckpt [--ckpt ...]

Writes benchmarks/results/error_budget-<experiment>-<device>.json per checkpoint (``--tag`` to name it) and
prints a table per checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_slug, header, markdown_table, write_json

from msma.checkpoint import load_inference_model
from msma.config import experiment_from_dict
from msma.data.batch import FaceBatch
from msma.data.datamodule import FaceDataModule
from msma.evaluation.split import synthetic_split_config
from msma.face_model.mirror import CoefficientMirror
from msma.face_model.params import CoeffLayout, FaceParams
from msma.metrics.nme import nme
from msma.pipeline import predict_params

#: |yaw| bins of the table, degrees (the 3DDFA protocol's).
YAW_BINS: tuple[tuple[str, float, float], ...] = (("0-30", 0.0, 30.0), ("30-60", 30.0, 60.0), ("60-90", 60.0, 90.01))


def _with(params: FaceParams, gt: FaceParams, groups: tuple[str, ...], trans_axes: tuple[int, ...] = ()) -> FaceParams:
    """``params`` with the ground truth's ``groups`` (and the given translation axes) put in."""
    changes = {g: getattr(gt, g) for g in groups}
    if trans_axes:
        trans = params.trans.clone()
        trans[:, list(trans_axes)] = gt.trans[:, list(trans_axes)]
        changes["trans"] = trans
    return params.replace(**changes)


def _yaw_only(params: FaceParams, gt: FaceParams) -> FaceParams:
    angles = params.angles.clone()
    angles[:, 1] = gt.angles[:, 1]
    return params.replace(angles=angles)


#: Variant name -> (predictions by kind, ground truth, mean face) -> coefficients; the predictions are the
#: network's single pass ``"plain"``, its flip-averaged pose ``"pose"`` and its flip average of every group ``"all"``.
VARIANTS: dict[str, Callable[[dict[str, FaceParams], FaceParams, FaceParams], FaceParams]] = {
    "network": lambda p, g, z: p["plain"],
    "network, flip-averaged pose": lambda p, g, z: p["pose"],
    "network, flip-averaged (every group)": lambda p, g, z: p["all"],
    "ground-truth angles": lambda p, g, z: _with(p["plain"], g, ("angles",)),
    "ground-truth yaw only": lambda p, g, z: _yaw_only(p["plain"], g),
    "ground-truth translation x, y": lambda p, g, z: _with(p["plain"], g, (), (0, 1)),
    "ground-truth translation z": lambda p, g, z: _with(p["plain"], g, (), (2,)),
    "ground-truth pose (angles + translation)": lambda p, g, z: _with(p["plain"], g, ("angles", "trans")),
    "ground-truth identity": lambda p, g, z: _with(p["plain"], g, ("id",)),
    "ground-truth expression": lambda p, g, z: _with(p["plain"], g, ("exp",)),
    "ground-truth shape (identity + expression)": lambda p, g, z: _with(p["plain"], g, ("id", "exp")),
    "mean face (untrained)": lambda p, g, z: z,
}


@torch.no_grad()
def error_budget(ckpt: str, limit: int | None = None) -> dict[str, Any]:
    """Per-variant mean NME (%) over the split and per |yaw| bin, plus the split's protocol."""
    model = load_inference_model(ckpt)
    cfg = experiment_from_dict(model.config)
    data = synthetic_split_config(cfg.data)
    loader, split = FaceDataModule(data, model.face_model).heldout_dataloader(limit)
    mirror = CoefficientMirror.from_face_model(model.face_model)
    per_face: dict[str, list[torch.Tensor]] = {name: [] for name in VARIANTS}
    yaws: list[torch.Tensor] = []
    for batch in loader:
        assert isinstance(batch, FaceBatch)
        size = int(batch.image.shape[-1])
        p = predict_params(model.encoder, batch.image)
        preds = {
            "plain": p,
            "pose": predict_params(model.encoder, batch.image, flip_average=True),
            "all": predict_params(model.encoder, batch.image, flip_average=True, mirror=mirror),
        }
        layout = CoeffLayout(int(p.id.shape[-1]), int(p.exp.shape[-1]), int(p.tex.shape[-1]))
        gt = batch.gt_params(layout)
        if gt is None or not bool(batch.params_valid.all()) or not bool(batch.landmark_valid.all()):
            raise ValueError(f"{ckpt}: the {split} split lacks ground-truth coefficients or landmarks")
        z = model.face_model.layout.zeros(batch.batch_size)
        for name, make in VARIANTS.items():
            lm = model.face_model(make(preds, gt, z), image_size=size).landmarks_2d.float()
            per_face[name].append(100.0 * nme(lm, batch.landmarks.float()))
        yaws.append(batch.yaw.float().abs())
    yaw = torch.cat(yaws)
    rows: dict[str, dict[str, Any]] = {}
    for name, chunks in per_face.items():
        v = torch.cat(chunks)
        bins = {
            b: (float(v[(yaw >= lo) & (yaw < hi)].mean()) if bool(((yaw >= lo) & (yaw < hi)).any()) else None)
            for b, lo, hi in YAW_BINS
        }
        rows[name] = {"nme": float(v.mean()), "bins": bins}
    mean_face = rows["mean face (untrained)"]["nme"]
    for row in rows.values():
        row["ratio_to_mean_face"] = row["nme"] / mean_face
    counts = {b: int(((yaw >= lo) & (yaw < hi)).sum()) for b, lo, hi in YAW_BINS}
    return {
        "experiment": cfg.name,
        "split": f"synthetic {split} split, seed {data.seed}, {int(yaw.numel())} faces, {data.image_size} px",
        "faces_per_bin": counts,
        "variants": rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", action="append", required=True, help="checkpoint (repeat for several)")
    parser.add_argument("--tag", action="append", default=None, help="name of each output (default: experiment)")
    parser.add_argument("--limit", type=int, default=None, help="first N faces of the split only")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.tag is not None and len(args.tag) != len(args.ckpt):
        parser.error("give one --tag per --ckpt")
    device = torch.device("cpu")
    for k, ckpt in enumerate(args.ckpt):
        result = error_budget(ckpt, args.limit)
        tag = args.tag[k] if args.tag else result["experiment"]
        payload = header(device, "error_budget", {"ckpt": ckpt, "limit": args.limit, "threads": args.threads})
        payload.update(result)
        path = write_json(f"error_budget-{tag}-{device_slug(device)}", payload)
        print(f"\n{ckpt}\n{result['split']}; faces per |yaw| bin: {result['faces_per_bin']}\n")
        columns = ["coefficients", "NME %", "ratio to mean face", *(f"|yaw| {b}" for b, _, _ in YAW_BINS)]
        table = [
            [name, f"{r['nme']:.2f}", f"{r['ratio_to_mean_face']:.3f}"]
            + ["-" if r["bins"][b] is None else f"{r['bins'][b]:.2f}" for b, _, _ in YAW_BINS]
            for name, r in result["variants"].items()
        ]
        print(markdown_table(columns, table))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
