"""Small faces and photos without a face: what the MediaPipe detection chain (``msma reconstruct --fit``'s, ``msma
prepare --landmarks mediapipe``'s) finds.

1. **Small real faces.** Each labelled real photo (``../shared/testdata``, or ``--photos DIR``): a square around its
   annotated face, 2.2 times the annotation box, is scaled so that the annotation box's longer side is S pixels
   (``--sizes``, default 60, 90, 130) and pasted at a seeded random place into a 1600 x 1200 background (skimage's
   photos without people and seeded noise, taken in turn). The chain runs on every face (``largest_only=False``).
   *Found*: a face whose box overlaps the pasted annotation box by more than half (intersection over the smaller
   box) and is 0.5-2 times as wide; *false faces*: faces that overlap it by 0.2 or less.
2. **Photos without a face.** skimage's photos that show no person (those its wheel ships; the others need a
   download and are left out) and seeded noise of 1000 and 2000 px: every face the chain reports is false.

For each false face the stage that found it (``landmarker``, ``tiles``, ``crop:<detector>``, ``box:<detector>``) is
recorded. The pasted faces are real faces on synthetic canvases; the counts measure the small-face search and its
false alarms, not a dataset's recall.

    python benchmarks/small_faces.py [--sizes 60,90,130] [--photos DIR] [--seed 5] [--small-tile-score 0 --full-frame-score 0 --out-name N]

Writes benchmarks/results/small_faces-cpu<N>.json and prints tables.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, header, markdown_table, median, write_json, write_markdown

ROOT = Path(__file__).resolve().parents[1]
CANVAS = (1200, 1600)  # height, width
#: skimage photos that show no person (``camera`` and ``astronaut`` do).
NO_FACE_IMAGES = (
    "coffee",
    "rocket",
    "chelsea",
    "hubble_deep_field",
    "brick",
    "grass",
    "gravel",
    "moon",
    "coins",
    "clock",
    "colorwheel",
    "logo",
    "horse",
    "page",
    "text",
    "immunohistochemistry",
    "retina",
    "cell",
)
#: Backgrounds of the pasted faces, taken in turn (``noise``: seeded uniform noise).
BACKGROUNDS = ("coffee", "rocket", "chelsea", "hubble_deep_field", "brick", "gravel", "noise")
#: Side of the pasted square around the face, in units of the annotation box's longer side.
CONTEXT = 2.2


def skimage_rgb(name: str) -> np.ndarray | None:
    """An skimage data image as (H, W, 3) uint8 RGB, or None when the wheel does not ship it (needs a download)."""
    import skimage.data

    try:
        a = np.asarray(getattr(skimage.data, name)())
    except Exception:  # pooch raises many types offline
        return None
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    a = a[..., :3]
    if a.dtype != np.uint8:
        a = (255.0 * (a - a.min()) / max(float(np.ptp(a)), 1e-9)).astype(np.uint8)
    return np.ascontiguousarray(a)


def background(name: str, rng: np.random.Generator) -> np.ndarray:
    """A CANVAS-sized background: an skimage photo resized, or seeded noise."""
    import cv2

    if name == "noise":
        return rng.integers(0, 256, (*CANVAS, 3), dtype=np.uint8)
    img = skimage_rgb(name)
    if img is None:
        return rng.integers(0, 256, (*CANVAS, 3), dtype=np.uint8)
    return np.ascontiguousarray(cv2.resize(img, (CANVAS[1], CANVAS[0]), interpolation=cv2.INTER_LINEAR))


def paste_face(
    image: np.ndarray, landmarks: np.ndarray, size: int, canvas: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The photo's annotated face with context, scaled so the annotation box's longer side is ``size`` px, pasted at
    a random place of ``canvas``.

    Returns:
        (the composite, the annotation box in it: left, top, right, bottom).
    """
    import cv2

    lo, hi = landmarks.min(0), landmarks.max(0)
    centre, side = (lo + hi) / 2.0, float((hi - lo).max())
    k = size / side
    half = CONTEXT * side / 2.0
    x0, y0 = (max(0, int(round(v - half))) for v in centre)
    x1 = min(image.shape[1], int(round(centre[0] + half)))
    y1 = min(image.shape[0], int(round(centre[1] + half)))
    patch = cv2.resize(
        image[y0:y1, x0:x1], (max(1, round((x1 - x0) * k)), max(1, round((y1 - y0) * k))), interpolation=cv2.INTER_AREA
    )
    ph, pw = patch.shape[:2]
    px = int(rng.integers(0, canvas.shape[1] - pw + 1))
    py = int(rng.integers(0, canvas.shape[0] - ph + 1))
    out = canvas.copy()
    out[py : py + ph, px : px + pw] = patch
    left, top = (lo - [x0, y0]) * k + [px, py]
    right, bottom = (hi - [x0, y0]) * k + [px, py]
    return out, (float(left), float(top), float(right), float(bottom))


def classify(faces: list[Any], box: tuple[float, float, float, float]) -> tuple[bool, list[str]]:
    """(whether the pasted face was found, the stages of the false faces) of a chain's faces."""
    from msma.data.detect import FaceBox

    target = FaceBox(*box)
    found = any(f.box.overlap(target) > 0.5 and 0.5 <= f.box.width / target.width <= 2.0 for f in faces)
    false = [f.source for f in faces if f.box.overlap(target) <= 0.2]
    return found, false


def labelled_photos(root: Path) -> list[tuple[Path, np.ndarray]]:
    """Every photo under ``root`` with a readable 68-point annotation next to it."""
    from msma.evaluation.photos import scan_photo_folder

    items, _ = scan_photo_folder(root)
    return [(it.path, it.landmarks) for it in items]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="60,90,130", help="pasted face sizes, px (annotation box side)")
    parser.add_argument("--photos", default=None, help="folder of labelled photos (default: ../shared/testdata)")
    parser.add_argument("--no-face", default=",".join(NO_FACE_IMAGES), help="skimage images without a face")
    parser.add_argument("--noise", default="1000,2000", help="sides of the seeded noise images ('' for none)")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument(
        "--small-tile-score",
        type=float,
        default=None,
        help="ablation: the least detector score of small tile candidates (msma: TILE_SMALL_MIN_SCORE, 0.5; 0 = "
        "the landmarker's own 0.3, as before it existed)",
    )
    parser.add_argument(
        "--full-frame-score",
        type=float,
        default=None,
        help="ablation: the least detector score of full-frame faces (msma: FULL_FRAME_MIN_SCORE, 0.5; 0 = none)",
    )
    parser.add_argument("--out-name", default=None, help="result name (default small_faces-cpu<N>)")
    parser.add_argument("--out-dir", default=None, help="result folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    shared = Path(os.environ.get("MSMA_SHARED", ROOT.parent / "shared"))
    os.environ.setdefault("MSMA_ASSET_MIRROR", str(shared / "assets"))

    import msma.data.mediapipe_backend as backend
    import msma.data.mediapipe_landmarker as landmarker
    from msma.data.io import load_image
    from msma.data.mediapipe_backend import shared_chain

    if args.small_tile_score is not None:
        landmarker.TILE_SMALL_MIN_SCORE = args.small_tile_score
    if args.full_frame_score is not None:
        backend.FULL_FRAME_MIN_SCORE = args.full_frame_score
    chain = shared_chain()
    rng = np.random.default_rng(args.seed)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    photos = labelled_photos(Path(args.photos) if args.photos else shared / "testdata")
    pasted: list[dict[str, Any]] = []
    k = 0
    for path, gt in photos:
        image = load_image(path).as_uint8()
        for size in sizes:
            bg = BACKGROUNDS[k % len(BACKGROUNDS)]
            k += 1
            img, box = paste_face(image, gt, size, background(bg, rng), rng)
            t0 = time.perf_counter()
            faces = chain.faces(img, largest_only=False)
            seconds = time.perf_counter() - t0
            found, false = classify(faces, box)
            pasted.append(
                {"photo": path.name, "size": size, "background": bg, "found": found, "false": false, "seconds": seconds}
            )
            print(f"{path.name:28s} {size:4d} px on {bg:18s} found={found!s:5s} false={false}", flush=True)
    no_face: list[dict[str, Any]] = []
    inputs = [(n, skimage_rgb(n)) for n in args.no_face.split(",") if n]
    inputs += [
        (f"noise{s}", rng.integers(0, 256, (int(s), int(s), 3), dtype=np.uint8)) for s in args.noise.split(",") if s
    ]
    for name, img in inputs:
        if img is None:
            continue
        t0 = time.perf_counter()
        faces = chain.faces(img, largest_only=False)
        seconds = time.perf_counter() - t0
        no_face.append(
            {"image": name, "size": list(img.shape[:2]), "false": [f.source for f in faces], "seconds": seconds}
        )
        print(f"{name:28s} no face: {len(faces)} reported {[f.source for f in faces]}", flush=True)

    rows = []
    for size in sizes:
        sel = [r for r in pasted if r["size"] == size]
        rows.append(
            [
                f"{size} px",
                len(sel),
                sum(r["found"] for r in sel),
                sum(len(r["false"]) for r in sel),
                f"{median([r['seconds'] for r in sel]):.2f}" if sel else "-",
            ]
        )
    table = markdown_table(["pasted face", "photos", "found", "false faces beside it", "s per image (median)"], rows)
    stages = Counter(s.split(":")[0] for r in no_face for s in r["false"])
    table2 = markdown_table(
        ["photos without a face", "with a reported face", "faces reported", "by stage"],
        [[len(no_face), sum(bool(r["false"]) for r in no_face), sum(len(r["false"]) for r in no_face), dict(stages)]],
    )
    print(table)
    print(table2)
    summary = {
        "pasted": {"count": len(pasted), "found": sum(r["found"] for r in pasted)},
        "false_beside_pasted": sum(len(r["false"]) for r in pasted),
        "no_face_images": len(no_face),
        "no_face_images_with_a_face": sum(bool(r["false"]) for r in no_face),
        "no_face_false_by_stage": dict(stages),
    }
    settings = {
        "sizes": sizes,
        "seed": args.seed,
        "canvas": list(CANVAS),
        "context": CONTEXT,
        "chain": chain.version,
        "small_tile_min_score": landmarker.TILE_SMALL_MIN_SCORE,
        "full_frame_min_score": backend.FULL_FRAME_MIN_SCORE,
    }
    payload = header(torch.device("cpu"), "small_faces", settings) | {
        "summary": summary,
        "pasted": pasted,
        "no_face": no_face,
    }
    name = args.out_name or f"small_faces-cpu{os.cpu_count()}"
    out_dir = Path(args.out_dir) if args.out_dir else RESULTS
    print(f"wrote {write_json(name, payload, out_dir)}")
    write_markdown(name, table + "\n\n" + table2, out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
