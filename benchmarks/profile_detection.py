"""Profiles: what the MediaPipe detection chain finds on faces turned 55-90 degrees, where no labelled real photo is
at hand (``../shared/testdata`` stops at 55 degrees).

The faces are msma's own synthetic ICT faces (:class:`msma.data.synthetic.SyntheticFaceDataset`, domain-randomised,
exact ground truth), drawn with yaw uniform in [-90, 90] and kept where ``|yaw| >= 55``; each 224 px crop is scaled
to 320 px and padded (edge pixels repeated) to a 450 px frame, the size of an AFLW2000-3D photo. For every face the
chain's first face is classified by the stage that found it (``landmarker``, ``tiles``, ``crop:<detector>``,
``box:<detector>`` = box-only, or none), and for dense faces the NME of the 51 inner points (MediaPipe's 478 -> 68
map; its jaw is a contour, so the jaw is left out) against the exact ground truth, in % of sqrt(w * h) of the
ground-truth box. A dense face above 20 % is counted as a wrong mesh (a frontal-looking mesh on a profile).

With ``--fit`` each frame also goes through ``msma reconstruct --fit`` (``Reconstructor(ckpt, landmarks="mediapipe",
fit=True)``, ``--ckpt mean`` by default) and its 68 reported landmarks (the fitted model's own landmark vertices, the
convention of the synthetic ground truth) are scored against all 68 ground-truth points, per bin and per kind of
face (dense landmarks fitted / box-only: the network's prediction, the mean face for ``--ckpt mean``); box-only faces
are scored with ``--recrop`` passes (default 1: re-cropped on the network's own landmarks, as ``msma reconstruct``) and
from their box crop alone.

These are renders, not photos: the box detectors (HOG, Haar cascades, dlib's CNN) were trained on photos, so the
counts say where the chain is weak, not what it finds on AFLW2000-3D.

    python benchmarks/profile_detection.py [--samples 192] [--seed 777] [--fit [--ckpt mean|PATH] [--recrop 1] [--tag T]]

Writes benchmarks/results/profile_detection-<device>.json and prints a table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, markdown_table, median, write_json, write_markdown

ROOT = Path(__file__).resolve().parents[1]
#: Yaw bins (degrees, lower edge inclusive).
BINS = ((55.0, 70.0), (70.0, 80.0), (80.0, 90.01))
FRAME = 450
FACE = 320
WRONG_MESH_NME = 20.0


def inner_nme(points68: np.ndarray, gt: np.ndarray) -> float:
    """Mean distance of the 51 inner points (17:) / sqrt(w * h) of the ground-truth box of all 68, in %
    (:func:`msma.metrics.nme.nme` with :func:`~msma.metrics.nme.landmark_box_size` of the 68 points)."""
    from msma.metrics.nme import landmark_box_size, nme

    pred_t, gt_t = (torch.as_tensor(a, dtype=torch.float64)[None] for a in (points68, gt))
    return 100.0 * float(nme(pred_t[:, 17:], gt_t[:, 17:], normalizer=landmark_box_size(gt_t))[0])


def _two_decimals(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def frame_of(image: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The crop scaled to FACE px and padded to a FRAME px photo; its landmarks in the frame's pixels."""
    import cv2

    size = image.shape[0]
    big = cv2.resize(image, (FACE, FACE), interpolation=cv2.INTER_LINEAR)
    pad = (FRAME - FACE) // 2
    frame = cv2.copyMakeBorder(big, pad, FRAME - FACE - pad, pad, FRAME - FACE - pad, cv2.BORDER_REPLICATE)
    scale = FACE / size
    return np.ascontiguousarray(frame), (landmarks + 0.5) * scale - 0.5 + pad


def fit_68(rec: Any, img: np.ndarray, gt: np.ndarray) -> dict[str, Any]:
    """``msma reconstruct --fit`` on one frame: the kind of face it reconstructed and its 68-point NME (%)."""
    from msma.evaluation.photos import photo_nme
    from msma.inference import NoFaceError

    try:
        r = rec.reconstruct(img)
    except NoFaceError:
        return {"fit_kind": "none", "fit_nme": None}
    kind = "box_only" if np.isnan(np.asarray(r.detected_landmarks)).all() else "dense"
    out: dict[str, Any] = {"fit_kind": kind, "fit_nme": 100.0 * photo_nme(np.asarray(r.landmarks), gt)}
    if kind == "box_only" and rec.recrop > 0:  # the same face from its box crop alone
        passes, rec.recrop = rec.recrop, 0
        try:
            out["fit_nme_box_crop"] = 100.0 * photo_nme(np.asarray(rec.reconstruct(img).landmarks), gt)
        finally:
            rec.recrop = passes
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=192, help="synthetic faces drawn (about 40 %% are kept)")
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--cache-dir", default=None, help="keep the generated faces here (default: a temp dir)")
    parser.add_argument("--fit", action="store_true", help="also score `msma reconstruct --fit` on every frame")
    parser.add_argument("--ckpt", default="mean", help="with --fit: the network that starts the fit")
    parser.add_argument(
        "--recrop", type=int, default=1, help="with --fit: re-crop passes of box-only faces (msma reconstruct --recrop)"
    )
    parser.add_argument("--tag", default=None, help="with --fit: added to the result name (e.g. the checkpoint's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2 if args.fit else 1)
    shared = Path(os.environ.get("MSMA_SHARED", ROOT.parent / "shared"))
    os.environ.setdefault("MSMA_ASSET_MIRROR", str(shared / "assets"))

    from msma.builders import build_face_model
    from msma.data.mediapipe_backend import shared_chain
    from msma.data.synthetic import SyntheticFaceDataset

    with tempfile.TemporaryDirectory() as tmp:
        ds = SyntheticFaceDataset(
            build_face_model("ict"),
            num_samples=args.samples,
            seed=args.seed,
            image_size=224,
            cache_dir=args.cache_dir or tmp,
            max_yaw_deg=90.0,
            extreme_yaw_fraction=0.0,
        )
        ds.ensure_generated(workers=1)
        chain = shared_chain()
        rec = None
        if args.fit:
            from msma.inference import Reconstructor

            ckpt = None if args.ckpt == "mean" else args.ckpt
            rec = Reconstructor(ckpt, landmarks="mediapipe", fit=True, renderer_backend="torch", recrop=args.recrop)
        faces: list[dict[str, Any]] = []
        for i in range(len(ds)):
            s = ds[i]
            yaw = abs(float(s.yaw))
            if yaw < BINS[0][0]:
                continue
            crop = (s.image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            img, gt = frame_of(crop, s.landmarks.numpy())
            t0 = time.perf_counter()
            found = chain.faces(img)
            seconds = time.perf_counter() - t0
            first = found[0] if found else None
            lm = first.landmarks68 if first is not None else None
            faces.append(
                {
                    "index": i,
                    "yaw": round(yaw, 2),
                    "source": first.source if first is not None else "none",
                    "dense": lm is not None,
                    "inner_nme": inner_nme(lm, gt) if lm is not None else None,
                    "seconds": seconds,
                }
            )
            if rec is not None:
                faces[-1].update(fit_68(rec, img, gt))
            print(f"{i:4d} yaw {yaw:5.1f} {faces[-1]['source']:22s} {faces[-1]['inner_nme']}", file=sys.stderr)

    rows, summary = [], []
    for lo, hi in BINS:
        sel = [f for f in faces if lo <= f["yaw"] < hi]
        dense = [f for f in sel if f["dense"]]
        nmes = [f["inner_nme"] for f in dense]
        row = {
            "bin": f"{lo:.0f}-{min(hi, 90):.0f}",
            "faces": len(sel),
            "dense": len(dense),
            "box_only": sum(f["source"].startswith("box:") for f in sel),
            "none": sum(f["source"] == "none" for f in sel),
            "by_dlib_cnn": sum(f["source"].endswith(":dlib_cnn") for f in sel),
            "inner_nme_median": median(nmes) if nmes else None,
            "wrong_mesh": sum(n > WRONG_MESH_NME for n in nmes),
            "seconds_median": median([f["seconds"] for f in sel]) if sel else None,
        }
        if rec is not None:
            for kind in ("dense", "box_only"):
                vals = [f["fit_nme"] for f in sel if f.get("fit_kind") == kind]
                row[f"fit_nme_median_{kind}"] = median(vals) if vals else None
            vals = [f["fit_nme_box_crop"] for f in sel if "fit_nme_box_crop" in f]
            row["fit_nme_median_box_only_box_crop"] = median(vals) if vals else None
            scored = [f["fit_nme"] for f in sel if f.get("fit_nme") is not None]
            row["fit_nme_mean_found"] = sum(scored) / len(scored) if scored else None
        summary.append(row)
        rows.append(
            [
                row["bin"],
                row["faces"],
                row["dense"],
                row["box_only"],
                row["none"],
                row["by_dlib_cnn"],
                _two_decimals(row["inner_nme_median"]),
                row["wrong_mesh"],
                _two_decimals(row["seconds_median"]),
            ]
            + (
                [
                    _two_decimals(row["fit_nme_median_dense"]),
                    _two_decimals(row["fit_nme_median_box_only"]),
                    _two_decimals(row["fit_nme_median_box_only_box_crop"]),
                    _two_decimals(row["fit_nme_mean_found"]),
                ]
                if rec is not None
                else []
            )
        )
    columns = [
        "|yaw| bin",
        "faces",
        "dense",
        "box-only",
        "none",
        "found by dlib CNN",
        "inner-51 NME % (median, dense)",
        f"wrong meshes (> {WRONG_MESH_NME:.0f} %)",
        "s per image (median)",
    ] + (
        [
            "fit NME % (median, dense)",
            f"fit NME % (median, box-only, {args.recrop} re-crop)",
            "fit NME % (median, box-only, box crop alone)",
            "fit NME % (mean, found)",
        ]
        if rec
        else []
    )
    table = markdown_table(columns, rows)
    print(table)
    settings = {"samples": args.samples, "seed": args.seed, "frame": FRAME, "face": FACE, "chain": chain.version}
    if rec is not None:
        settings["fit_ckpt"] = args.ckpt
        settings["recrop"] = args.recrop
    payload = header(torch.device("cpu"), "profile_detection", settings) | {"bins": summary, "faces": faces}
    fit = f"-fit{'-' + args.tag if args.tag else ''}" if rec is not None else ""
    name = f"profile_detection{fit}-cpu{os.cpu_count()}"
    print(f"wrote {write_json(name, payload)}")
    write_markdown(name, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
