"""torch vs nvdiffrast rasteriser parity on the ICT face: the figures the device check records.

Same scene as the gpu-marked parity test (``tests/integration/test_nvdiffrast_parity.py``), over several batches of
random identities and poses at 224: coverage IoU of the two rasterisers, the share of pixels both cover with the
same triangle, and the largest difference of interpolated vertex colours there. Targets (issue 16): IoU >= 0.999,
colours within 1e-4.

    python benchmarks/render_parity.py [--size 224] [--batch 32] [--out DIR]

Prints a table and one JSON line; writes ``render_parity-<device>.json``. Needs CUDA and nvdiffrast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, device_slug, header, markdown_table, write_json, write_markdown


def parity(batch: int, size: int, seed: int, device: torch.device) -> dict[str, Any]:
    """Parity figures of one batch of random ICT faces."""
    from msma.face_model import load_face_model
    from msma.render import TorchRasterizer
    from msma.render.nvdiffrast_raster import NvdiffrastRasterizer

    model = load_face_model("ict").to(device).eval()
    g = torch.Generator().manual_seed(seed)
    base = model.layout.zeros(batch)
    angles = (torch.rand(batch, 3, generator=g) - 0.5) * torch.tensor([0.4, 1.2, 0.3])
    params = base.replace(id=torch.randn(base.id.shape, generator=g) * 0.5, angles=angles).to(device)
    with torch.no_grad():
        face = model(params, image_size=size)
        tri = model.tri.to(device)
        ref, ras = NvdiffrastRasterizer(device), TorchRasterizer()
        rast_n = ref.rasterize(face.clip, tri, (size, size))
        rast_t = ras.rasterize(face.clip, tri, (size, size))
        cov_n, cov_t = rast_n[..., 3] > 0, rast_t[..., 3] > 0
        both = cov_n & cov_t
        same = both & (rast_n[..., 3] == rast_t[..., 3])
        col_n = ref.interpolate(face.color, rast_n, tri)
        col_t = ras.interpolate(face.color, rast_t, tri)
        diff = (col_n - col_t).abs().amax(dim=-1)[same]
    return {
        "batch": batch,
        "size": size,
        "seed": seed,
        "coverage_iou": float(both.sum()) / float((cov_n | cov_t).sum()),
        "same_triangle_share": float(same.sum()) / float(both.sum()),
        "colour_max_abs_diff": float(diff.max()),
        "colour_p99_abs_diff": float(torch.quantile(diff.float()[:1_000_000], 0.99)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("render_parity: needs a CUDA device", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    rows = [parity(args.batch, args.size, s, device) for s in args.seeds]
    summary = {
        "coverage_iou_min": min(r["coverage_iou"] for r in rows),
        "colour_max_abs_diff": max(r["colour_max_abs_diff"] for r in rows),
        "targets": {"coverage_iou_min": 0.999, "colour_max_abs_diff": 1e-4},
    }
    summary["meets_targets"] = summary["coverage_iou_min"] >= 0.999 and summary["colour_max_abs_diff"] <= 1e-4
    payload = header(device, "render_parity", vars(args) | {"out": str(args.out)}) | {"rows": rows, **summary}
    cols = ["batch", "size", "seed", "coverage IoU", "same-triangle share", "max colour diff", "p99 colour diff"]
    table = markdown_table(
        cols,
        [
            [
                r["batch"],
                r["size"],
                r["seed"],
                f"{r['coverage_iou']:.6f}",
                f"{r['same_triangle_share']:.6f}",
                f"{r['colour_max_abs_diff']:.2e}",
                f"{r['colour_p99_abs_diff']:.2e}",
            ]
            for r in rows
        ],
    )
    print(table)
    name = f"render_parity-{device_slug(device)}"
    write_json(name, payload, args.out)
    write_markdown(name, table, args.out)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
