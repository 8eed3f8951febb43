"""Readers of the scan benchmarks' layouts: MICC Florence (this package's layout) and NoW (validation release).

See docs/evaluation.md for the folder layouts; :mod:`msma.evaluation.scans` measures reconstructions against
the scans these functions list.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msma.metrics.mesh_error import NOW_LANDMARKS_68
from msma.utils.files import require_regular_file

log = logging.getLogger(__name__)

#: MICC layout (this package's; see docs/evaluation.md): per subject folder, a scan and its landmarks.
MICC_SCAN_NAMES = ("scan.obj", "scan.ply", "scan.off", "scan.stl")
MICC_LANDMARK_NAME = "scan_landmarks.txt"
#: NoW layout (the official validation release): image list and folders under ``--root``.
NOW_IMAGE_LIST = "imagepathsvalidation.txt"
NOW_IMAGES = Path("final_release_version") / "iphone_pictures"
NOW_SCANS = Path("final_release_version") / "scans"
NOW_LANDMARKS = Path("final_release_version") / "scans_lmks_onlypp"


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


@dataclass(frozen=True)
class ScanLayout:
    """What a benchmark folder holds: the images to score and what was left out.

    Attributes:
        items: one :class:`ScanItem` per image of a usable subject.
        skipped: ``{"image": path, "reason": "<code>: <detail>"}`` per subject (its folder as ``image``) or listed
            image left out: ``no_scan``, ``no_images``, ``bad_annotation`` (landmarks unreadable, not finite, wrong
            count), each naming the file.
    """

    items: list[ScanItem]
    skipped: list[dict[str, str]]


def read_landmarks_txt(path: Path) -> np.ndarray:
    """(K, 3) whitespace / comma separated 3D points, one per line (K = 68 or 7), all finite.

    Raises:
        ValueError: unreadable, wrong shape or non-finite (the message names the file).
    """
    try:
        require_regular_file(path)  # a named pipe would block the read for ever
        pts = np.loadtxt(path, delimiter=None if b"," not in path.read_bytes() else ",", dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read 3D landmarks ({exc})") from exc
    if pts.ndim != 2 or pts.shape[1] != 3 or pts.shape[0] not in (68, len(NOW_LANDMARKS_68)):
        raise ValueError(f"{path}: expected 68 or 7 rows of x y z, got shape {pts.shape}")
    _check_finite(pts, path)
    return pts


def _check_finite(pts: np.ndarray, path: Path) -> None:
    bad = int((~np.isfinite(pts).all(axis=1)).sum())
    if bad:
        raise ValueError(f"{path}: {bad} of the {pts.shape[0]} landmarks are not finite numbers")


def read_pp(path: Path) -> np.ndarray:
    """(K, 3) points of a MeshLab PickedPoints ``.pp`` file (NoW's scan landmarks), in file order."""
    try:
        # A local annotation file from the dataset release (XML without external entities).
        require_regular_file(path)
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise ValueError(f"{path}: not a readable MeshLab .pp file ({exc})") from exc
    try:
        pts = [[float(p.get(k, "nan")) for k in "xyz"] for p in root.iter("point")]
    except ValueError as exc:
        raise ValueError(f"{path}: a point coordinate is not a number ({exc})") from exc
    arr = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
    if arr.shape[0] != len(NOW_LANDMARKS_68) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{path}: expected {len(NOW_LANDMARKS_68)} finite points, got {arr.shape[0]}")
    return arr


def micc_items(root: Path) -> ScanLayout:
    """``root/<subject>/{scan.obj|ply|off|stl, scan_landmarks.txt, images/*}`` (see docs/evaluation.md).

    A subject without a scan, without images or with unreadable landmarks is left out and recorded in
    :attr:`ScanLayout.skipped`; the others are scored.

    Raises:
        FileNotFoundError: no usable subject at all (the message lists why the first ones were left out).
    """
    from msma.data.io import list_images

    items: list[ScanItem] = []
    skipped: list[dict[str, str]] = []
    subjects = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for subject in subjects:
        scan = next((subject / n for n in MICC_SCAN_NAMES if (subject / n).is_file()), None)
        images = list_images(subject / "images") if (subject / "images").is_dir() else []
        if scan is None:
            skipped.append(_skip(subject, "no_scan", f"{subject}: none of {'/'.join(MICC_SCAN_NAMES)}"))
            continue
        if not images:
            skipped.append(_skip(subject, "no_images", f"{subject / 'images'}: no photos"))
            continue
        try:
            lm = read_landmarks_txt(subject / MICC_LANDMARK_NAME)
        except ValueError as exc:
            skipped.append(_skip(subject, "bad_annotation", str(exc)))
            continue
        items += [ScanItem(img, scan, lm, subject.name) for img in images]
    if not items:
        why = "; ".join(r["reason"] for r in skipped[:3])
        raise FileNotFoundError(
            f"{root}: no MICC-layout subjects (<subject>/scan.obj, scan_landmarks.txt, images/)"
            + (f": {why}" if why else "")
        )
    return ScanLayout(items, skipped)


def now_items(root: Path) -> ScanLayout:
    """The NoW validation release under ``root`` (``imagepathsvalidation.txt``, ``final_release_version/``).

    A listed image whose subject has no scan ``.obj`` or no readable ``.pp`` landmarks is left out and recorded in
    :attr:`ScanLayout.skipped`.

    Raises:
        FileNotFoundError: the image list is missing.
    """
    listing = root / NOW_IMAGE_LIST
    if not listing.is_file():
        raise FileNotFoundError(f"{listing}: missing (the NoW validation image list)")
    items: list[ScanItem] = []
    skipped: list[dict[str, str]] = []
    for line in listing.read_text(errors="replace").splitlines():
        rel = line.strip()
        if not rel:
            continue
        subject = Path(rel).parts[0]
        scans = sorted((root / NOW_SCANS / subject).glob("*.obj"))
        pps = sorted((root / NOW_LANDMARKS / subject).glob("*.pp"))
        image = root / NOW_IMAGES / rel
        if not scans:
            skipped.append(_skip(image, "no_scan", f"{root / NOW_SCANS / subject}: no scan .obj"))
            continue
        if not pps:
            skipped.append(_skip(image, "bad_annotation", f"{root / NOW_LANDMARKS / subject}: no .pp landmarks"))
            continue
        try:
            landmarks = read_pp(pps[0])
        except ValueError as exc:
            skipped.append(_skip(image, "bad_annotation", str(exc)))
            continue
        items.append(ScanItem(image, scans[0], landmarks, subject))
    return ScanLayout(items, skipped)


def _skip(image: Path, code: str, detail: str) -> dict[str, str]:
    """The record of a subject or image left out of a scan benchmark (logged): ``{"image", "reason"}``."""
    log.warning("%s: skipped (%s: %s)", image, code, detail)
    return {"image": str(image), "reason": f"{code}: {detail}"}


def load_scan(path: Path) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Scan vertices (S, 3) in mm, faces (G, 3) or None, and the factor applied (1000 for metre scans).

    Raises:
        ValueError: unreadable, not a mesh, no vertices, a non-finite vertex or a face indexing past the vertices
            (the message names the file).
    """
    import trimesh

    try:
        require_regular_file(path)  # a named pipe would block the read for ever
        mesh = trimesh.load(path, process=False, force="mesh")
    except Exception as exc:  # trimesh raises many types for bad files
        raise ValueError(f"{path}: cannot read the scan ({type(exc).__name__}: {exc})") from exc
    if not isinstance(mesh, (trimesh.Trimesh, trimesh.PointCloud)):
        raise ValueError(f"{path}: not a mesh or point cloud ({type(mesh).__name__})")
    verts = np.asarray(mesh.vertices, dtype=np.float64)
    if verts.ndim != 2 or verts.shape[0] < 3:
        raise ValueError(f"{path}: the scan has no vertices")
    bad = int((~np.isfinite(verts).all(axis=1)).sum())
    if bad:
        raise ValueError(f"{path}: {bad} of the scan's {verts.shape[0]} vertices are not finite numbers")
    faces = np.asarray(mesh.faces, dtype=np.int64) if isinstance(mesh, trimesh.Trimesh) and len(mesh.faces) else None
    if faces is not None and (faces.min() < 0 or faces.max() >= verts.shape[0]):
        raise ValueError(f"{path}: a face refers to a vertex the scan does not have (of {verts.shape[0]})")
    extent = float(np.linalg.norm(verts.max(axis=0) - verts.min(axis=0)))
    factor = 1000.0 if extent < 5.0 else 1.0  # a face scan under 5 units across is in metres
    return verts * factor, faces, factor
