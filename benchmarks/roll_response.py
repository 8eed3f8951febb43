"""Does a network read the head's roll? Its prediction on crops turned in the image plane.

Deep3D's crop (``msma reconstruct``: detection, 5-point alignment by scale and translation) keeps the head's roll,
so the network has to read it. Here each face's crop is turned about its centre by theta in ``--angles`` (degrees;
``crop_to_image @ R(theta)``, the same face tilted by theta in the crop) and the network's prediction of the turned
crop (flip-averaged and clamped, as ``msma reconstruct``) is mapped back to the original image. A network that reads
the roll predicts the same landmarks whatever theta (its predicted roll changes by theta: *roll gain* 1, the least-
squares slope of the predicted roll's change against theta); one that ignores the roll keeps roll 0 in every crop
(gain 0) and its landmarks turn with the crop. The mean face (the untrained network) is the gain-0 reference.

Faces: the labelled real photos of ``--photos`` (default ``../shared/testdata``: every sub-folder with 68-point
``.pts`` / AFLW-style ``.mat`` files; the annotated face, as ``msma eval --data photos`` picks it) and ``--synthetic``
held-out synthetic ICT faces at the checkpoint's crop size (the generator's defaults: roll ~ N(0, 6 deg) truncated at
20; their crops are turned about the crop centre). NME: 68 points / sqrt(w * h) of the ground-truth box, in %.

    python benchmarks/roll_response.py --ckpt runs/embedded/<stamp>/checkpoints/best-*.ckpt [--tag T]

Writes benchmarks/results/roll_response-<tag>-<device>.json and prints a table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_slug, header, markdown_table, write_json

ROOT = Path(__file__).resolve().parents[1]


def turn(theta_deg: float, size: int) -> np.ndarray:
    """(3, 3) crop -> crop affine turning by ``theta_deg`` about the crop centre (pixel-index units, y down)."""
    t = np.radians(theta_deg)
    c = (size - 1) / 2.0
    co, si = np.cos(t), np.sin(t)
    return np.array([[co, -si, c - co * c + si * c], [si, co, c - si * c - co * c], [0.0, 0.0, 1.0]])


def roll_gain(angles: list[float], rolls: list[float]) -> float:
    """Least-squares slope through the origin of the predicted roll's change (vs theta = 0) against theta."""
    a = np.asarray(angles, dtype=np.float64)
    r = np.asarray(rolls, dtype=np.float64) - rolls[angles.index(0.0)]
    return float((a * r).sum() / (a * a).sum())


def _predict(rec: Any, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(K, 68, 2) crop-pixel landmarks and (K,) roll in degrees of K crops (``msma reconstruct``'s treatment)."""
    from msma.pipeline import treated_params

    x = torch.stack([torch.from_numpy(c.transpose(2, 0, 1).copy()) for c in crops]).float().to(rec.device)
    with torch.no_grad():
        params = treated_params(
            rec.model.encoder, rec.face_model, x, rec.flip_average, rec.mirror, rec.clamp_expressions
        )
        lm = rec.face_model(params, image_size=rec.image_size).landmarks_2d
    return lm.double().cpu().numpy(), np.degrees(params.angles[:, 2].double().cpu().numpy())


def photo_faces(rec: Any, roots: list[Path]) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(name, loaded image, crop -> loaded-image transform, ground truth in loaded pixels) of each annotated face."""
    from msma.data.align import apply_affine
    from msma.data.io import load_image
    from msma.evaluation.photos import centre_distance, reconstruct_annotated, scan_photo_folder
    from msma.inference import NoFaceError

    out = []
    for root in roots:
        items, _ = scan_photo_folder(root)
        for item in items:
            try:  # as `msma eval --data photos`: the largest face, else the detection nearest the annotation
                recs, _ = reconstruct_annotated(rec, item)
            except NoFaceError:
                print(f"{item.path}: no face found, left out", file=sys.stderr)
                continue
            best = min(recs, key=lambda r: centre_distance(r.box, item.landmarks))
            loaded = load_image(item.path)
            to_orig = loaded.loaded_to_original()
            crop_to_loaded = np.linalg.inv(to_orig) @ best.crop_to_image
            gt = apply_affine(np.linalg.inv(to_orig), item.landmarks)
            out.append((item.path.name, loaded.image, crop_to_loaded, gt))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", action="append", required=True, help="checkpoint(s); 'mean' for the mean face")
    parser.add_argument("--angles", default="-30,-20,-10,0,10,20,30", help="crop turns, degrees (0 included)")
    parser.add_argument("--photos", action="append", default=None, help="labelled photo folder(s)")
    parser.add_argument("--synthetic", type=int, default=64, help="held-out synthetic faces (0: none)")
    parser.add_argument("--seed", type=int, default=4242, help="seed of the synthetic faces")
    parser.add_argument("--tag", default=None, help="result name (default: the first checkpoint's run name)")
    args = parser.parse_args(argv)
    angles = [float(a) for a in args.angles.split(",")]
    if 0.0 not in angles or len(angles) < 2:
        raise SystemExit("--angles must hold 0 and at least one other angle")
    torch.set_num_threads(2)
    shared = Path(os.environ.get("MSMA_SHARED", ROOT.parent / "shared"))
    os.environ.setdefault("MSMA_ASSET_MIRROR", str(shared / "assets"))
    testdata = shared / "testdata"
    roots = [Path(p) for p in args.photos] if args.photos else sorted(p for p in testdata.iterdir() if p.is_dir())

    from msma.data.align import apply_affine, warp_crop
    from msma.evaluation.photos import photo_nme
    from msma.inference import Reconstructor

    results: dict[str, Any] = {}
    rows = []
    for ckpt in args.ckpt:
        rec = Reconstructor(None if ckpt == "mean" else ckpt, renderer_backend="torch", recrop=0)
        size = rec.image_size
        per: dict[str, Any] = {"photos": {}, "synthetic": {}}
        for name, image, m, gt in photo_faces(rec, roots):
            crops = [warp_crop(image, m @ turn(a, size), size) for a in angles]
            lm, roll = _predict(rec, crops)
            nmes = [100.0 * photo_nme(apply_affine(m @ turn(a, size), lm[k]), gt) for k, a in enumerate(angles)]
            per["photos"][name] = {
                "nme": nmes,
                "roll_deg": roll.tolist(),
                "roll_gain": roll_gain(angles, roll.tolist()),
            }
        if args.synthetic > 0:
            from msma.builders import build_face_model
            from msma.data.synthetic import SyntheticFaceDataset

            with tempfile.TemporaryDirectory() as tmp:
                ds = SyntheticFaceDataset(
                    build_face_model("ict"),
                    args.synthetic,
                    seed=args.seed,
                    image_size=size,
                    cache_dir=tmp,
                    progress=False,
                )
                ds.ensure_generated(workers=1)
                for i in range(len(ds)):
                    s = ds[i]
                    crop = s.image.permute(1, 2, 0).numpy().astype(np.float32)
                    crops = [warp_crop(crop, turn(a, size), size) for a in angles]
                    lm, roll = _predict(rec, crops)
                    gt = s.landmarks.numpy().astype(np.float64)
                    nmes = [100.0 * photo_nme(apply_affine(turn(a, size), lm[k]), gt) for k, a in enumerate(angles)]
                    per["synthetic"][str(i)] = {"nme": nmes, "roll_gain": roll_gain(angles, roll.tolist())}
        label = "mean face" if ckpt == "mean" else Path(ckpt).name
        summary = {}
        for split in ("photos", "synthetic"):
            faces = per[split]
            if not faces:
                continue
            nme = np.array([f["nme"] for f in faces.values()])
            summary[split] = {
                "faces": len(faces),
                "nme_by_angle": dict(zip([f"{a:g}" for a in angles], nme.mean(0).tolist())),
                "roll_gain_median": float(np.median([f["roll_gain"] for f in faces.values()])),
            }
            rows.append(
                [label, split, len(faces), f"{summary[split]['roll_gain_median']:.2f}"]
                + [f"{v:.2f}" for v in nme.mean(0)]
            )
        results[ckpt] = {"summary": summary, "faces": per}
    cols = ["network", "faces", "n", "roll gain (median)"] + [f"NME % @ {a:g} deg" for a in angles]
    table = markdown_table(cols, rows)
    print(table)
    dev = torch.device("cpu")
    tag = args.tag or Path(args.ckpt[0]).stem
    payload = header(dev, "roll_response", {"angles": angles, "synthetic": args.synthetic, "seed": args.seed})
    payload.update({"photo_roots": [str(r) for r in roots], "results": results, "table": table})
    path = write_json(f"roll_response-{tag}-{device_slug(dev)}", payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
