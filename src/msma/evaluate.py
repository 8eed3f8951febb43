"""``msma eval``: benchmark a checkpoint (or the untrained mean face) on AFLW2000-3D, synthetic, MICC or NoW data.

Protocols and layouts are described in ``docs/evaluation.md``; the metric definitions live in
:mod:`msma.metrics`. Every run prints a table and writes a JSON report (next to the checkpoint unless
``--out`` says otherwise) that records the protocol (crop mode, ground truth, counts), the device and versions.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from msma.data.batch import FaceBatch, collate_samples
from msma.metrics.mesh_error import NOW_LANDMARKS_68, MeshError, ScanError, scan_error
from msma.metrics.nme import AFLW2000NME, YAW_BIN_NAMES, transform_points
from msma.metrics.synthetic import SyntheticMetrics

log = logging.getLogger(__name__)

DATASETS = ("aflw2000_3d", "synthetic", "micc", "now")
#: MICC layout (this package's; see docs/evaluation.md): per subject folder, a scan and its landmarks.
MICC_SCAN_NAMES = ("scan.obj", "scan.ply", "scan.off", "scan.stl")
MICC_LANDMARK_NAME = "scan_landmarks.txt"
#: NoW layout (the official validation release): image list and folders under ``--root``.
NOW_IMAGE_LIST = "imagepathsvalidation.txt"
NOW_IMAGES = Path("final_release_version") / "iphone_pictures"
NOW_SCANS = Path("final_release_version") / "scans"
NOW_LANDMARKS = Path("final_release_version") / "scans_lmks_onlypp"


# ----------------------------------------------------------------------------------------------- model
def load_module(ckpt: str, device: torch.device) -> Any:
    """A :class:`msma.module.FaceReconModule` from a checkpoint, or the untrained one for ``"mean"``."""
    from msma.builders import build_untrained_module, load_module_from_checkpoint

    if ckpt == "mean":
        module = build_untrained_module(renderer_backend="torch")
    else:
        module = load_module_from_checkpoint(Path(ckpt), map_location="cpu")
    return module.to(device).eval()


def _image_size(module: Any, override: int | None) -> int:
    if override:
        return int(override)
    data = dict(module.config.get("data") or {})
    return int(data.get("image_size") or 224)


def _progress(iterable: Iterable[Any], total: int, desc: str) -> Iterable[Any]:
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", file=sys.stderr, dynamic_ncols=True)


def _limit(dataset: Any, limit: int | None) -> Any:
    if limit is not None and limit < len(dataset):
        return Subset(dataset, range(limit))
    return dataset


# --------------------------------------------------------------------------------------------- AFLW2000
def predicted_landmarks_3d(
    landmarks_2d: Tensor, landmarks_3d_mm: Tensor, focal_px: float, distance_mm: float
) -> Tensor:
    """Predicted 68 landmarks as ``pt3d_68``-like points in crop pixels: x, y projected, z in pixel scale.

    Args:
        landmarks_2d: (B, 68, 2) projected landmarks in crop pixels.
        landmarks_3d_mm: (B, 68, 3) posed landmarks in mm (model frame, +z towards the camera).
        focal_px: the camera's focal length at the crop size, pixels.
        distance_mm: the camera distance, mm.

    Returns:
        (B, 68, 3): z is the model-frame depth times the local image scale ``focal / mean depth`` (crop pixels
        per mm at the face), +z towards the viewer as in ``pt3d_68``.
    """
    depth = (distance_mm - landmarks_3d_mm[..., 2]).mean(dim=1, keepdim=True)
    z = landmarks_3d_mm[..., 2] * focal_px / depth
    return torch.cat([landmarks_2d, z[..., None]], dim=-1)


def mean_face_box(face_model: Any, image_size: int) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the mean face's 68 projected landmarks in an aligned ``image_size`` crop.

    With zero coefficients the face model's mean face sits where Deep3D's alignment puts a face (the alignment
    template is the mean face's 5 points, its origin on the principal point).
    """
    with torch.no_grad():
        zeros = face_model.layout.zeros(1, device=face_model.mean_shape.device)
        lm = face_model(zeros, image_size=image_size).landmarks_2d[0].double().cpu().numpy()
    return float(lm[:, 0].min()), float(lm[:, 1].min()), float(lm[:, 0].max()), float(lm[:, 1].max())


def box_aligned_transform(
    box: tuple[float, float, float, float], reference: tuple[float, float, float, float]
) -> np.ndarray:
    """Crop -> image affine that maps a reference landmark box (crop pixels) onto a given box (image pixels).

    Scale ``max(w / w_ref, h / h_ref)`` (the larger relative extent, so a profile's narrow box is sized by its
    height and a pitched face's short box by its width), translation box centre <- reference centre. It uses
    the ground-truth box only (no landmark positions inside it), as the 3DDFA protocol allows.

    Args:
        box: (left, top, right, bottom) in image pixels.
        reference: the same box of the mean face in an aligned crop (:func:`mean_face_box`), crop pixels.

    Returns:
        (3, 3) float64 affine crop pixels -> image pixels.
    """
    left, top, right, bottom = box
    rl, rt, rr, rb = reference
    if min(right - left, bottom - top, rr - rl, rb - rt) <= 0:
        raise ValueError(f"degenerate box {box} or reference {reference}")
    k = max((right - left) / (rr - rl), (bottom - top) / (rb - rt))
    cx, cy = 0.5 * (left + right), 0.5 * (top + bottom)
    rcx, rcy = 0.5 * (rl + rr), 0.5 * (rt + rb)
    return np.array([[k, 0.0, cx - k * rcx], [0.0, k, cy - k * rcy], [0.0, 0.0, 1.0]])


def _aflw_dataset(root: Path, crop: str, image_size: int, face_model: Any, landmarks: str, detector: str) -> Any:
    """AFLW2000-3D with one of the crop modes (``gt_box``, ``box_aligned``, ``detect``)."""
    from msma.data.align import template_from_face_model
    from msma.data.datasets import AFLW2000Dataset
    from msma.data.detect import FaceBox

    template = template_from_face_model(face_model)
    if crop != "box_aligned":
        return AFLW2000Dataset(
            root,
            crop=crop,  # type: ignore[arg-type]
            image_size=image_size,
            landmarks=landmarks,
            detector=detector,
            template=template,
        )
    reference = mean_face_box(face_model, image_size)

    class BoxAlignedAFLW2000(AFLW2000Dataset):
        def crop_transform(self, index: int) -> np.ndarray:
            b = FaceBox.from_points(self.records[index].landmarks)
            return box_aligned_transform((b.left, b.top, b.right, b.bottom), reference)

    return BoxAlignedAFLW2000(root, crop="gt_box", image_size=image_size, template=template)


def evaluate_aflw2000(
    module: Any,
    root: Path,
    crop: str,
    image_size: int,
    device: torch.device,
    batch_size: int,
    limit: int | None,
    landmarks: str = "dlib",
    detector: str = "dlib",
) -> dict[str, Any]:
    """AFLW2000-3D 68-point NME (2D and 3D) per yaw bin; see :mod:`msma.metrics.nme`."""
    dataset = _aflw_dataset(root, crop, image_size, module.face_model, landmarks, detector)
    if len(dataset) == 0:
        raise FileNotFoundError(f"{root}: no AFLW2000-3D samples (image*.jpg + .mat)")
    data = _limit(dataset, limit)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate_samples)
    metric = AFLW2000NME()
    camera = module.face_model.camera
    with torch.no_grad():
        for batch in _progress(loader, len(loader), "aflw2000_3d"):
            batch = batch.to(device)
            assert isinstance(batch, FaceBatch) and batch.landmarks_3d is not None
            out = module.reconstruct(batch.image, render=False)
            lm3 = predicted_landmarks_3d(
                out.face.landmarks_2d, out.face.landmarks_3d, camera.focal(image_size), camera.distance
            )
            pred3 = transform_points(lm3.double(), batch.crop_to_image.double())
            gt3 = batch.landmarks_3d.double()
            metric.update(pred3[..., :2], gt3[..., :2], batch.yaw, pred_3d=pred3, gt_3d=gt3)
    res = metric.summary()
    return {
        **res.as_dict(),
        "protocol": {
            "ground_truth": "original AFLW2000-3D pt3d_68 (not the re-annotated set)",
            "normalisation": "sqrt(w*h) of the ground-truth 68-point box, original 450x450 image frame",
            "crop": crop,
            "crop_detail": {
                "gt_box": "square on the ground-truth 68-point box, side sqrt(2)*max(w,h) (3DDFA benchmark)",
                "box_aligned": "the ground-truth 68-point box mapped onto the mean face's box in a Deep3D-aligned "
                "crop (scale max(w/w0, h/h0), centres matched): the box alone, at the training crops' scale",
                "detect": f"own detector ({detector}) + {landmarks} landmarks + Deep3D 5-point alignment",
            }[crop],
            "detect_fallbacks_to_gt_box": int(getattr(dataset, "detect_fallbacks", 0)),
            "yaw_bins_deg": list(YAW_BIN_NAMES),
            "reference_bin_counts_full_set_3ddfa": [1312, 383, 305],
            "nme_3d": "x,y,z of pt3d_68, each set's z centred on its mean, same normaliser",
        },
    }


# -------------------------------------------------------------------------------------------- synthetic
def evaluate_synthetic(
    module: Any,
    image_size: int,
    device: torch.device,
    batch_size: int,
    num_samples: int,
    seed: int | None,
    cache_dir: str | None,
) -> dict[str, Any]:
    """The synthetic held-out test split of the checkpoint's configuration (``FaceDataModule``'s test seed)."""
    from msma.data.datamodule import TEST_SEED_OFFSET
    from msma.data.synthetic import SyntheticFaceDataset
    from msma.face_model.assets import msma_home

    data_cfg = dict(module.config.get("data") or {})
    base_seed = int(seed if seed is not None else data_cfg.get("seed", 0))
    if cache_dir is None:
        cfg_dir = data_cfg.get("synthetic_cache_dir", "auto")
        cache_dir = str(msma_home() / "synthetic") if cfg_dir in ("auto", None) else str(cfg_dir)
    face_model = module.face_model
    dataset = SyntheticFaceDataset(
        face_model,
        num_samples=num_samples,
        seed=base_seed + TEST_SEED_OFFSET,
        image_size=image_size,
        cache_dir=cache_dir,
        renderer_backend=str(data_cfg.get("synthetic_renderer", "torch")),
        progress=sys.stderr.isatty(),
    )
    dataset.ensure_generated()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_samples)
    rendered = torch.zeros(face_model.n_vertices, device=device)
    rendered[face_model.tri.unique()] = 1.0
    metric = SyntheticMetrics(vertex_mask=rendered).to(device)
    layout = face_model.layout
    with torch.no_grad():
        for batch in _progress(loader, len(loader), "synthetic"):
            batch = batch.to(device)
            out = module.reconstruct(batch.image, render=False)
            gt_params = layout.split(batch.params) if batch.params is not None else None
            if batch.vertices is None:
                raise ValueError("synthetic samples came without ground-truth vertices")
            metric.update(
                out.face.vertices, batch.vertices, out.face.landmarks_2d, batch.landmarks, out.params, gt_params
            )
    res = metric.summary()
    return {
        **res.as_dict(),
        "protocol": {
            "split": f"synthetic test split: seed {base_seed} + {TEST_SEED_OFFSET}, first {num_samples} samples",
            "image_size": image_size,
            "vertex_error": "mean Euclidean distance over the rendered-region vertices; 'raw' as posed, "
            "'aligned' after a per-face rigid least-squares fit",
            "nme": "68-point 2D NME in the crop, normalised by sqrt(w*h) of the ground-truth box",
        },
    }


# ------------------------------------------------------------------------------------------ scan layouts
@dataclass(frozen=True)
class ScanItem:
    """One image to reconstruct and the scan it is compared with.

    Attributes:
        image: photo path.
        scan: scan mesh path (mm; metres are detected and converted).
        landmarks: (K, 3) scan landmarks in the scan's units (68 iBUG points or NoW's 7).
        subject: subject name (for per-subject means).
    """

    image: Path
    scan: Path
    landmarks: np.ndarray
    subject: str


def read_landmarks_txt(path: Path) -> np.ndarray:
    """(K, 3) whitespace / comma separated 3D points, one per line (K = 68 or 7)."""
    try:
        pts = np.loadtxt(path, delimiter=None if b"," not in path.read_bytes() else ",", dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read 3D landmarks ({exc})") from exc
    if pts.ndim != 2 or pts.shape[1] != 3 or pts.shape[0] not in (68, len(NOW_LANDMARKS_68)):
        raise ValueError(f"{path}: expected 68 or 7 rows of x y z, got shape {pts.shape}")
    return pts


def read_pp(path: Path) -> np.ndarray:
    """(K, 3) points of a MeshLab PickedPoints ``.pp`` file (NoW's scan landmarks), in file order."""
    try:
        # A local annotation file from the dataset release (XML without external entities).
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise ValueError(f"{path}: not a readable MeshLab .pp file ({exc})") from exc
    pts = [[float(p.get("x", "nan")), float(p.get("y", "nan")), float(p.get("z", "nan"))] for p in root.iter("point")]
    arr = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
    if arr.shape[0] != len(NOW_LANDMARKS_68) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{path}: expected {len(NOW_LANDMARKS_68)} finite points, got {arr.shape[0]}")
    return arr


def micc_items(root: Path) -> list[ScanItem]:
    """``root/<subject>/{scan.obj|ply|off|stl, scan_landmarks.txt, images/*}`` (see docs/evaluation.md)."""
    from msma.data.io import list_images

    items: list[ScanItem] = []
    subjects = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for subject in subjects:
        scan = next((subject / n for n in MICC_SCAN_NAMES if (subject / n).is_file()), None)
        if scan is None:
            log.warning("%s: no scan (%s); subject skipped", subject, "/".join(MICC_SCAN_NAMES))
            continue
        lm = read_landmarks_txt(subject / MICC_LANDMARK_NAME)
        images = list_images(subject / "images") if (subject / "images").is_dir() else []
        items += [ScanItem(img, scan, lm, subject.name) for img in images]
    if not items:
        raise FileNotFoundError(f"{root}: no MICC-layout subjects (<subject>/scan.obj, scan_landmarks.txt, images/)")
    return items


def now_items(root: Path) -> list[ScanItem]:
    """The NoW validation release under ``root`` (``imagepathsvalidation.txt``, ``final_release_version/``)."""
    listing = root / NOW_IMAGE_LIST
    if not listing.is_file():
        raise FileNotFoundError(f"{listing}: missing (the NoW validation image list)")
    items: list[ScanItem] = []
    for line in listing.read_text().splitlines():
        rel = line.strip()
        if not rel:
            continue
        subject = Path(rel).parts[0]
        scans = sorted((root / NOW_SCANS / subject).glob("*.obj"))
        pps = sorted((root / NOW_LANDMARKS / subject).glob("*.pp"))
        if not scans or not pps:
            raise FileNotFoundError(f"{root / NOW_SCANS / subject}: scan .obj or its .pp landmarks missing")
        items.append(ScanItem(root / NOW_IMAGES / rel, scans[0], read_pp(pps[0]), subject))
    return items


def load_scan(path: Path) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Scan vertices (S, 3) in mm, faces (G, 3) or None, and the factor applied (1000 for metre scans)."""
    import trimesh

    try:
        mesh = trimesh.load(path, process=False, force="mesh")
    except Exception as exc:  # trimesh raises many types for bad files
        raise ValueError(f"{path}: cannot read the scan ({type(exc).__name__}: {exc})") from exc
    if not isinstance(mesh, (trimesh.Trimesh, trimesh.PointCloud)):
        raise ValueError(f"{path}: not a mesh or point cloud ({type(mesh).__name__})")
    verts = np.asarray(mesh.vertices, dtype=np.float64)
    if verts.ndim != 2 or verts.shape[0] < 3:
        raise ValueError(f"{path}: the scan has no vertices")
    faces = np.asarray(mesh.faces, dtype=np.int64) if isinstance(mesh, trimesh.Trimesh) and len(mesh.faces) else None
    extent = float(np.linalg.norm(verts.max(axis=0) - verts.min(axis=0)))
    factor = 1000.0 if extent < 5.0 else 1.0  # a face scan under 5 units across is in metres
    return verts * factor, faces, factor


def evaluate_scans(
    reconstructor: Any,
    items: Sequence[ScanItem],
    with_scale: bool,
    crop_radius: float,
    batch_size: int,
) -> dict[str, Any]:
    """Reconstructs each image and measures its canonical mesh against the subject's scan."""
    from msma.metrics.mesh_error import MICC_CROP_RADIUS_MM

    metric = MeshError()
    per_subject: dict[str, list[float]] = {}
    skipped: list[dict[str, str]] = []
    face_model = reconstructor.face_model
    tri = face_model.tri.detach().cpu().numpy()
    lm_idx = face_model.landmark_idx.detach().cpu().numpy()
    scans: dict[Path, tuple[np.ndarray, np.ndarray | None, float]] = {}
    chunks = [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    for chunk in _progress(chunks, len(chunks), "scans"):
        results = reconstructor.reconstruct_many([str(it.image) for it in chunk], batch_size=batch_size)
        for item, res in zip(chunk, results):
            if isinstance(res, str):
                skipped.append({"image": str(item.image), "reason": res})
                continue
            if item.scan not in scans:
                scans[item.scan] = load_scan(item.scan)
            sv, sf, factor = scans[item.scan]
            verts = res[0].vertices_canonical.double().numpy()
            pred_lm = verts[lm_idx]
            if item.landmarks.shape[0] == len(NOW_LANDMARKS_68):
                pred_lm = pred_lm[list(NOW_LANDMARKS_68)]
            err: ScanError = scan_error(
                verts, tri, pred_lm, sv, sf, item.landmarks * factor, crop_radius=crop_radius, with_scale=with_scale
            )
            metric.update(err)
            per_subject.setdefault(item.subject, []).append(err.rmse)
    s = metric.summary()
    subject_means = {k: float(np.mean(v)) for k, v in sorted(per_subject.items())}
    return {
        "rmse_mm": s.rmse_mean,
        "rmse_std_mm": s.rmse_std,
        "scan_to_mesh_median_mm": s.median,
        "scan_to_mesh_mean_mm": s.mean,
        "scan_to_mesh_std_mm": s.std,
        "count": s.count,
        "per_subject_rmse_mm": subject_means,
        "skipped": skipped,
        "protocol": {
            "crop_radius_mm": crop_radius,
            "micc_default_crop_mm": MICC_CROP_RADIUS_MM,
            "alignment": ("similarity" if with_scale else "rigid") + " by landmarks, then point-to-plane ICP",
            "rmse": "symmetric point-to-surface RMSE, each direction weighted half",
            "prediction": "canonical (unposed) mesh of the face model's rendered triangles",
        },
    }


# ---------------------------------------------------------------------------------------------- report
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def format_table(data: str, result: dict[str, Any]) -> str:
    """A plain-text table of the headline numbers of one evaluation."""
    rows: list[tuple[str, str]] = []
    if data == "aflw2000_3d":
        for name, v, n in zip(YAW_BIN_NAMES, result["bins"], result["counts"]):
            rows.append((f"NME 2D |yaw| {name} (%)", f"{_fmt(v)}  (n={n})"))
        rows += [
            ("NME 2D balanced mean (%)", _fmt(result["balanced"])),
            ("NME 2D mean over images (%)", _fmt(result["mean"])),
            ("NME 3D balanced mean (%)", _fmt(result["balanced_3d"])),
            ("NME 3D mean over images (%)", _fmt(result["mean_3d"])),
            ("crop", result["protocol"]["crop"]),
        ]
    elif data == "synthetic":
        rows += [
            ("vertex error, aligned (mm)", _fmt(result["vertex_error_mm"])),
            ("vertex error, as posed (mm)", _fmt(result["vertex_error_raw_mm"])),
            ("landmark NME 2D (%)", _fmt(result["nme_2d_pct"])),
            ("yaw error (deg)", _fmt(result["yaw_deg"])),
            ("pose angle error (deg)", _fmt(result["angles_deg"])),
            ("translation error (mm)", _fmt(result["trans_mm"])),
            ("id / exp / tex coeff RMSE", " / ".join(_fmt(result[k]) for k in ("id_rmse", "exp_rmse", "tex_rmse"))),
        ]
    else:
        rows += [
            ("RMSE (mm)", f"{_fmt(result['rmse_mm'])} +- {_fmt(result['rmse_std_mm'])}"),
            ("scan-to-mesh median (mm)", _fmt(result["scan_to_mesh_median_mm"])),
            ("scan-to-mesh mean (mm)", _fmt(result["scan_to_mesh_mean_mm"])),
            ("scan-to-mesh std (mm)", _fmt(result["scan_to_mesh_std_mm"])),
            ("skipped images", str(len(result["skipped"]))),
        ]
    rows.append(("samples", str(result["count"])))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def default_output(ckpt: str, data: str, crop: str | None) -> Path:
    """``<ckpt folder>/eval_<ckpt stem>_<data>[_<crop>].json``; for ``mean``: ``./eval_mean_<data>...json``."""
    suffix = f"_{crop}" if crop else ""
    if ckpt == "mean":
        return Path(f"eval_mean_{data}{suffix}.json")
    p = Path(ckpt)
    return p.parent / f"eval_{p.stem}_{data}{suffix}.json"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="msma eval", description="Evaluate a checkpoint (or the mean face) on a benchmark."
    )
    p.add_argument("--ckpt", required=True, help="checkpoint from 'msma train', or 'mean' (untrained network)")
    p.add_argument("--data", required=True, choices=DATASETS)
    p.add_argument("--root", default=None, help="dataset folder (synthetic: cache folder, optional)")
    p.add_argument(
        "--crop", default="gt_box", choices=("gt_box", "box_aligned", "detect"), help="AFLW2000-3D crop protocol"
    )
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N samples only")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", default=None, help="JSON report path (default: next to the checkpoint)")
    p.add_argument("--image-size", type=int, default=None, help="crop size (default: the checkpoint's)")
    p.add_argument(
        "--num-samples",
        type=int,
        default=None,
        help="synthetic: test samples before --limit (default: the checkpoint's data.val_samples; mean: 256)",
    )
    p.add_argument("--seed", type=int, default=None, help="synthetic: base seed (default: the checkpoint's)")
    p.add_argument("--landmarks", default="dlib", help="landmark backend for detect crops / scan benchmarks")
    p.add_argument("--detector", default="dlib", help="face detector for detect crops / scan benchmarks")
    p.add_argument(
        "--crop-radius", type=float, default=95.0, help="micc/now: scan crop radius around the nose tip (mm)"
    )
    p.add_argument("--similarity", action="store_true", help="micc: allow a scale in the alignment (now: always)")
    return p


def cli_main(argv: list[str]) -> int:
    """``msma eval``; returns 0 on success, 2 on bad usage or unreadable inputs."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("msma eval: --device cuda requested but CUDA is not available", file=sys.stderr)
        return 2
    if args.data != "synthetic" and not args.root:
        print(f"msma eval: --data {args.data} needs --root DIR", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 1:
        print("msma eval: --limit must be >= 1", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        result = _evaluate(args, device)
    except (FileNotFoundError, ValueError) as exc:
        print(f"msma eval: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - t0
    crop = args.crop if args.data == "aflw2000_3d" else None
    report = {
        "checkpoint": args.ckpt,
        "data": args.data,
        "root": args.root,
        "limit": args.limit,
        "result": result,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "host": {"python": platform.python_version(), "torch": torch.__version__, "cpus": _cpu_count()},
        "seconds": round(seconds, 2),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out = Path(args.out) if args.out else default_output(args.ckpt, args.data, crop)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    title = f"msma eval: {args.data}" + (f" ({crop} crop)" if crop else "") + f", checkpoint {args.ckpt}"
    print(title)
    print(format_table(args.data, result))
    print(f"  ({seconds:.1f} s on {report['device']}; report: {out})")
    return 0


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, (tuple, Path)):
        return list(x) if isinstance(x, tuple) else str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _evaluate(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    if args.data in ("micc", "now"):
        from msma.inference import Reconstructor

        root = Path(args.root)
        items = micc_items(root) if args.data == "micc" else now_items(root)
        if args.limit is not None:
            items = items[: args.limit]
        rec = Reconstructor(
            None if args.ckpt == "mean" else args.ckpt,
            device=device,
            detector=args.detector,
            landmarks=args.landmarks,
            image_size=args.image_size,
            renderer_backend="torch" if device.type == "cpu" else "auto",
        )
        return evaluate_scans(
            rec,
            items,
            with_scale=args.similarity or args.data == "now",
            crop_radius=args.crop_radius,
            batch_size=args.batch_size,
        )
    module = load_module(args.ckpt, device)
    image_size = _image_size(module, args.image_size)
    if args.data == "aflw2000_3d":
        return evaluate_aflw2000(
            module,
            Path(args.root),
            args.crop,
            image_size,
            device,
            args.batch_size,
            args.limit,
            landmarks=args.landmarks,
            detector=args.detector,
        )
    total = args.num_samples or int(dict(module.config.get("data") or {}).get("val_samples") or 256)
    n = total if args.limit is None else min(args.limit, total)
    return evaluate_synthetic(module, image_size, device, args.batch_size, n, args.seed, args.root)
