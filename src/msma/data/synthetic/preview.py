"""Preview grids of synthetic samples and the ``python -m msma.data.synthetic`` command (grid, speed)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from msma.data.synthetic.dataset import SyntheticFaceDataset


def sample_grid(
    dataset: SyntheticFaceDataset, indices: list[int], columns: int = 4, draw_landmarks: bool = True
) -> np.ndarray:
    """A picture of samples with their 68 landmarks (green dots) and yaw, (rows * S, columns * S, 3) uint8 RGB."""
    tiles = []
    for i in indices:
        raw = dataset.raw(i)
        tile = np.ascontiguousarray(raw.images[0])
        if draw_landmarks:
            for x, y in raw.landmarks[0]:
                cv2.circle(tile, (round(float(x) * 4), round(float(y) * 4)), 4, (40, 255, 40), -1, cv2.LINE_AA, shift=2)
        yaw = math.degrees(float(dataset.face_model.layout.split(torch.from_numpy(raw.params)).angles[0, 1]))
        cv2.putText(tile, f"yaw {yaw:+.0f}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[r : r + columns], axis=1) for r in range(0, len(tiles), columns)]
    return np.concatenate(rows, axis=0)


def main(argv: list[str] | None = None) -> int:
    """``python -m msma.data.synthetic``: writes a preview grid and/or measures the generation speed."""
    import argparse
    import platform

    from msma.face_model import load_face_model

    parser = argparse.ArgumentParser(prog="python -m msma.data.synthetic", description=main.__doc__)
    parser.add_argument("--grid", type=Path, help="write a PNG grid of samples with landmarks here")
    parser.add_argument("--num", type=int, default=16, help="samples in the grid")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--speed", type=int, default=0, help="time the generation of this many samples")
    parser.add_argument("--batch", type=int, default=8, help="render batch for --speed")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model = load_face_model("ict")
    ds = SyntheticFaceDataset(
        model, max(args.num, args.speed), seed=args.seed, image_size=args.size, renderer_backend=args.backend
    )
    if args.grid is not None:
        grid = sample_grid(ds, list(range(args.num)))
        args.grid.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(args.grid), grid[..., ::-1]):
            raise OSError(f"cannot write {args.grid}")
        print(f"wrote {args.grid} ({grid.shape[1]}x{grid.shape[0]})")
    if args.speed > 0:
        ds.generate([0])  # warm-up
        t0 = time.perf_counter()
        for b0 in range(0, args.speed, args.batch):
            ds.generate(list(range(b0, min(b0 + args.batch, args.speed))))
        dt = time.perf_counter() - t0
        print(
            f"generated {args.speed} samples at {args.size}px, batch {args.batch}, backend {args.backend}: "
            f"{dt / args.speed:.3f} s/sample ({args.speed / dt:.2f} samples/s) on {platform.processor() or 'cpu'}, "
            f"{torch.get_num_threads()} torch threads"
        )
    return 0
