"""Inference latency: ``msma reconstruct`` without file writing, per face, with a stage breakdown.

The network is an untrained MSMA encoder (ResNet-50, 224 px): its cost is that of a trained one. Stages:
decode (photo already in memory: 0), detection (dlib HOG), 68 landmarks (dlib), alignment + crop, network
(encoder + face model), overlay (render at photo resolution + blend). "core" is the crop-to-mesh part a batch
pipeline with known boxes pays (network); "end-to-end" is everything ``Reconstructor.reconstruct`` does.

    python benchmarks/inference.py [--encoder msma_lka] [--backbone resnet50] [--repeats 20] [--threads 2]

Writes benchmarks/results/inference-<device>.json and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_slug, header, markdown_table, median, write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="msma_lka")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from skimage import data as skdata

    from msma.inference import Reconstructor
    from msma.models import build_encoder

    rec = Reconstructor(None, device=device, image_size=args.size, renderer_backend="auto")
    # The mean-face Reconstructor uses a small encoder; swap in the benchmarked one (zero heads, same cost as trained).
    rec.model.encoder = build_encoder(args.encoder, rec.face_model.layout, backbone=args.backbone).to(device).eval()
    photo = skdata.astronaut()  # (512, 512, 3) uint8, one face
    inp = rec._decode(photo)

    stages: dict[str, list[float]] = {k: [] for k in ("detect", "landmarks", "align", "network", "overlay", "total")}

    def once() -> dict[str, float]:
        from msma.data.align import alignment_transform, warp_crop

        t: dict[str, float] = {}
        t0 = time.perf_counter()
        u8 = np.ascontiguousarray(np.clip(np.rint(inp.image * 255.0), 0, 255).astype(np.uint8))
        boxes = sorted(rec.detector.detect(u8, largest_only=True), key=lambda b: -b.area)
        t1 = time.perf_counter()
        lm = np.asarray(rec.landmark_backend.detect(u8, boxes[0]), dtype=np.float64)
        t2 = time.perf_counter()
        m = alignment_transform(lm, rec.template, rec.image_size)
        crop = warp_crop(inp.image, m, rec.image_size)
        t3 = time.perf_counter()
        with torch.no_grad():
            x = torch.from_numpy(crop.transpose(2, 0, 1).copy())[None].to(device)
            params = rec.model.encoder(x)
            face = rec.face_model(params, image_size=rec.image_size)
            face.vertices.sum().item()
        t4 = time.perf_counter()
        with torch.no_grad():
            rec._overlay(inp.image, m, params[0], face.landmarks_2d[0].cpu().double().numpy())
        t5 = time.perf_counter()
        t.update(detect=t1 - t0, landmarks=t2 - t1, align=t3 - t2, network=t4 - t3, overlay=t5 - t4, total=t5 - t0)
        return t

    for _ in range(args.warmup):
        once()
    for _ in range(args.repeats):
        for k, v in once().items():
            stages[k].append(v)
    # Cross-check: the public API end to end (includes result packaging).
    api = []
    for _ in range(max(3, args.repeats // 4)):
        t0 = time.perf_counter()
        rec.reconstruct(photo)
        api.append(time.perf_counter() - t0)

    rows: list[list[Any]] = [[k, median(v) * 1e3] for k, v in stages.items()]
    rows.append(["Reconstructor.reconstruct (API)", median(api) * 1e3])
    payload = header(device, "inference", vars(args)) | {
        "image": "skimage.data.astronaut() 512x512, 1 face",
        "stages_ms_median": {k: median(v) * 1e3 for k, v in stages.items()},
        "stages_ms_all": {k: [x * 1e3 for x in v] for k, v in stages.items()},
        "api_reconstruct_ms_median": median(api) * 1e3,
        "target_ms_per_face": 150.0,
    }
    path = write_json(f"inference-{device_slug(device)}", payload)
    print(markdown_table(["stage", "ms (median)"], rows))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
