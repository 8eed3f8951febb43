"""``msma eval``: benchmark a checkpoint (or the untrained mean face) on AFLW2000-3D, synthetic, labelled photos,
MICC or NoW data.

A thin command over :mod:`msma.evaluation`. Protocols and layouts are described in ``docs/evaluation.md``.
Every run prints a table and writes a JSON report (next to the checkpoint unless ``--out`` says otherwise) that
records the protocol (crop mode, ground truth, counts), the device and versions. ``--data synthetic`` without
other options evaluates the run's own held-out split with the run's batch size, as its ``metrics.json`` did.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from msma.evaluation.aflw2000 import CROPS
from msma.evaluation.report import default_output, format_table, json_default
from msma.pipeline import FacePipeline
from msma.utils.cores import cpu_count
from msma.utils.files import atomic_write_text

DATASETS = ("aflw2000_3d", "synthetic", "photos", "micc", "now")


def load_model(ckpt: str, device: torch.device) -> FacePipeline:
    """The network of a checkpoint (encoder + face model + renderer, no loss), or the untrained one (``mean``)."""
    from msma.checkpoint import load_inference_model, untrained_pipeline

    if ckpt == "mean":
        model = untrained_pipeline(renderer_backend="torch")
    else:
        model = load_inference_model(Path(ckpt), map_location="cpu")
    return model.to(device).eval()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="msma eval", description="Evaluate a checkpoint (or the mean face) on a benchmark."
    )
    p.add_argument("--ckpt", required=True, help="checkpoint from 'msma train', or 'mean' (untrained network)")
    p.add_argument("--data", required=True, choices=DATASETS)
    p.add_argument("--root", default=None, help="dataset folder (synthetic: cache folder, optional)")
    p.add_argument(
        "--crop",
        default="detect",
        choices=CROPS,
        help="AFLW2000-3D crop: detect (default: msma's own detection and 5-point alignment, as msma reconstruct), "
        "gt_box (3DDFA's square on the ground-truth box) or box_aligned",
    )
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N samples only")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--batch-size", type=int, default=None, help="default: the checkpoint's data.batch_size (synthetic), else 16"
    )
    p.add_argument("--out", default=None, help="JSON report path (default: next to the checkpoint)")
    p.add_argument("--image-size", type=int, default=None, help="crop size (default: the checkpoint's)")
    p.add_argument(
        "--num-samples",
        type=int,
        default=None,
        help="synthetic: held-out samples before --limit (default: the checkpoint's data.val_samples; mean: 256)",
    )
    p.add_argument("--seed", type=int, default=None, help="synthetic: base seed (default: the checkpoint's)")
    p.add_argument(
        "--landmarks",
        default=None,
        help="landmark backend for detect crops / photos / scan benchmarks (default: mediapipe with --fit, else dlib)",
    )
    p.add_argument(
        "--detector",
        default=None,
        help="face detector for detect crops / photos / scan benchmarks (default: mediapipe with --landmarks "
        "mediapipe, else dlib)",
    )
    p.add_argument(
        "--fit",
        action="store_true",
        help="photos: score `msma reconstruct --fit` (3DMM fitting to MediaPipe's dense landmarks) for the checkpoint",
    )
    p.add_argument(
        "--crop-radius", type=float, default=95.0, help="micc/now: scan crop radius around the nose tip (mm)"
    )
    p.add_argument("--similarity", action="store_true", help="micc: allow a scale in the alignment (now: always)")
    p.add_argument(
        "--no-flip-average",
        action="store_true",
        help="aflw2000_3d / photos / micc / now: the network's coefficients from the crop alone (default: averaged "
        "with its mirror image's, as msma reconstruct)",
    )
    p.add_argument(
        "--no-clamp-expressions",
        action="store_true",
        help="aflw2000_3d / photos / micc / now: the network's blendshape weights as it outputs them (default: "
        "clamped to the model's [0, 1], as msma reconstruct)",
    )
    p.add_argument(
        "--recrop",
        type=int,
        default=0,
        help="aflw2000_3d: photos cropped from a box (gt_box, box_aligned, detect where no face was found) get this "
        "many more passes, each re-cropped on the network's own predicted landmarks (default 0: the box crop "
        "alone)",
    )
    return p


def cli_main(argv: list[str]) -> int:
    """``msma eval``; returns 0 on success, 2 on bad usage or unreadable inputs."""
    args = _parser().parse_args(argv)
    args.landmarks = args.landmarks or ("mediapipe" if args.fit else "dlib")
    args.detector = args.detector or ("mediapipe" if args.landmarks == "mediapipe" else "dlib")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("msma eval: --device cuda requested but CUDA is not available", file=sys.stderr)
        return 2
    if args.data != "synthetic" and not args.root:
        print(f"msma eval: --data {args.data} needs --root DIR", file=sys.stderr)
        return 2
    if args.fit and args.data != "photos":
        print("msma eval: --fit applies to --data photos (AFLW2000-3D folders included)", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 1:
        print("msma eval: --limit must be >= 1", file=sys.stderr)
        return 2
    if args.num_samples is not None and args.num_samples < 1:
        print("msma eval: --num-samples must be >= 1", file=sys.stderr)
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
        "host": {"python": platform.python_version(), "torch": torch.__version__, "cpus": cpu_count()},
        "seconds": round(seconds, 2),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out = Path(args.out) if args.out else default_output(args.ckpt, args.data, crop)
    atomic_write_text(out, json.dumps(report, indent=2, default=json_default) + "\n")
    title = f"msma eval: {args.data}" + (f" ({crop} crop)" if crop else "") + f", checkpoint {args.ckpt}"
    print(title)
    print(format_table(args.data, result))
    print(f"  ({seconds:.1f} s on {report['device']}; report: {out})")
    if not result["count"]:  # every sample skipped: the report says why, the exit status says it failed
        print(f"msma eval: nothing could be scored under {args.root} (see the skip reasons above)", file=sys.stderr)
        return 1
    return 0


def _evaluate(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    if args.data == "photos":
        from msma.evaluation.photos import evaluate_photos

        return evaluate_photos(
            None if args.ckpt == "mean" else args.ckpt,
            Path(args.root),
            device=device,
            detector=args.detector,
            landmarks=args.landmarks,
            image_size=args.image_size,
            limit=args.limit,
            fit=args.fit,
            flip_average=not args.no_flip_average,
            clamp_expressions=not args.no_clamp_expressions,
        )
    if args.data in ("micc", "now"):
        from msma.data.scans import micc_items, now_items
        from msma.evaluation.scans import evaluate_scans
        from msma.inference import Reconstructor

        root = Path(args.root)
        layout = micc_items(root) if args.data == "micc" else now_items(root)
        items = layout.items if args.limit is None else layout.items[: args.limit]
        rec = Reconstructor(
            None if args.ckpt == "mean" else args.ckpt,
            device=device,
            detector=args.detector,
            landmarks=args.landmarks,
            image_size=args.image_size,
            renderer_backend="torch" if device.type == "cpu" else "auto",
            flip_average=not args.no_flip_average,
            clamp_expressions=not args.no_clamp_expressions,
        )
        return evaluate_scans(
            rec,
            items,
            with_scale=args.similarity or args.data == "now",
            crop_radius=args.crop_radius,
            batch_size=args.batch_size or 16,
            skipped=layout.skipped,
        )
    model = load_model(args.ckpt, device)
    if args.data == "aflw2000_3d":
        from msma.evaluation.aflw2000 import evaluate_aflw2000

        return evaluate_aflw2000(
            model,
            Path(args.root),
            args.crop,
            args.image_size or model.image_size,
            device,
            args.batch_size or 16,
            args.limit,
            landmarks=args.landmarks,
            detector=args.detector,
            flip_average=not args.no_flip_average,
            clamp_expressions=not args.no_clamp_expressions,
            recrop=args.recrop,
        )
    from msma.evaluation.split import evaluate_synthetic_split

    return evaluate_synthetic_split(
        model,
        device,
        image_size=args.image_size,
        num_samples=args.num_samples,
        seed=args.seed,
        cache_dir=args.root,
        batch_size=args.batch_size,
        limit=args.limit,
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli_main(sys.argv[1:]))
