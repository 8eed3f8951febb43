"""``msma assets ict [--force] [--source PATH]`` | ``msma assets mediapipe [--path FILE]`` | ``msma assets bfm --dir
DIR [--out FILE]``: a thin command over :mod:`msma.face_model.assets`, :mod:`msma.data.mediapipe_asset` and
:mod:`msma.face_model.bfm`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from msma.face_model.assets import AssetError, build_ict_cache
from msma.face_model.model import FaceModel, load_arrays


def _human(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


def cli_main(argv: list[str]) -> int:
    """``msma assets ict [--force] [--source PATH]`` | ``msma assets bfm --dir DIR [--out FILE]``."""
    parser = argparse.ArgumentParser(prog="msma assets", description="convert / locate face-model assets")
    sub = parser.add_subparsers(dest="asset", required=True)
    p_ict = sub.add_parser("ict", help="convert ICT-FaceKit into the cache ($MSMA_HOME)")
    p_ict.add_argument("--force", action="store_true", help="rebuild even if a valid cache file exists")
    p_ict.add_argument("--source", type=Path, default=None, help="upstream zip or extracted folder")
    p_mp = sub.add_parser(
        "mediapipe",
        help="locate (mirror, cache) or download MediaPipe's face_landmarker.task, verify it, and build the "
        "MediaPipe-to-ICT correspondence used by fitting",
    )
    p_mp.add_argument("--path", type=Path, default=None, help="use this bundle file (not checksum-enforced)")
    p_bfm = sub.add_parser("bfm", help="validate / convert the user's BFM files (Deep3D format)")
    p_bfm.add_argument("--dir", type=Path, required=True, help="folder with BFM_model_front.mat or its sources")
    p_bfm.add_argument("--out", type=Path, default=None, help="write the compact .npz here as well")
    args = parser.parse_args(argv)

    def say(msg: str) -> None:
        print(f"  {msg}", file=sys.stderr)

    t0 = time.perf_counter()
    try:
        if args.asset == "ict":
            path = build_ict_cache(source=args.source, force=args.force, progress=say)
            model = FaceModel(load_arrays(path))
            print(
                f"ict: {path} ({_human(path.stat().st_size)}), {model.n_vertices} vertices, "
                f"{int(model.tri.shape[0])} rendered triangles, layout {model.layout}, "
                f"{time.perf_counter() - t0:.1f} s"
            )
            return 0
        if args.asset == "mediapipe":
            from msma.data.mediapipe_asset import FACE_LANDMARKER_SHA256, find_face_landmarker
            from msma.face_model import load_face_model
            from msma.fitting import load_correspondence
            from msma.utils.files import sha256_file

            task = find_face_landmarker(args.path)
            verified = "sha256 verified" if sha256_file(task) == FACE_LANDMARKER_SHA256 else "NOT the pinned file"
            corr = load_correspondence(load_face_model("ict"), task)
            print(
                f"mediapipe: {task} ({_human(task.stat().st_size)}, {verified}); correspondence to ICT: "
                f"{corr.vertex_idx.shape[0]} points, median residual {float(np.median(corr.residual_mm)):.2f} mm, "
                f"{time.perf_counter() - t0:.1f} s"
            )
            return 0
        from msma.face_model.bfm import load_bfm

        model = load_bfm(args.dir)
        msg = f"bfm: {model.n_vertices} vertices, {int(model.tri.shape[0])} triangles, layout {model.layout}"
        if args.out is not None:
            model.save(args.out)
            msg += f", wrote {args.out} ({_human(args.out.stat().st_size)})"
        print(f"{msg}, {time.perf_counter() - t0:.1f} s")
        return 0
    except (AssetError, FileNotFoundError, ValueError) as exc:
        print(f"msma assets: error: {exc}", file=sys.stderr)
        return 1
