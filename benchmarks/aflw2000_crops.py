"""AFLW2000-3D by crop mode and test-time treatment: which crop a checkpoint should be scored on.

For each checkpoint (and the mean face, the untrained network) and each ``msma eval --data aflw2000_3d`` crop mode
(``detect``: msma's own detection and 5-point alignment with MediaPipe's chain where the detector finds nothing;
``gt_box``: 3DDFA's square on the ground-truth box; ``box_aligned``: that box mapped to the training crops' scale),
the 68-point 2D NME per yaw bin, of the network's raw single pass and of ``msma reconstruct``'s treatment (every
coefficient group averaged over the crop and its mirror image, blendshape weights clamped to [0, 1]), and for the box
crops that treatment with one more pass re-cropped on the network's own landmarks (``--recrop 1``, the default of
``msma eval``; :func:`msma.data.align.recrop_transform`). NME: original
``pt3d_68``, / sqrt(w * h) of the ground-truth box, % (:mod:`msma.evaluation.aflw2000`).

    python benchmarks/aflw2000_crops.py --ckpt runs/embedded/<stamp>/checkpoints/best-*.ckpt \\
        [--root ../shared/testdata/aflw2000_3d] [--tag embedded]

Writes benchmarks/results/aflw2000-crops-<tag>-<device>.json and prints a table.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_slug, header, markdown_table, write_json

from msma.cli.eval import load_model
from msma.evaluation.aflw2000 import CROPS, evaluate_aflw2000

ROOT = Path(__file__).resolve().parents[1]
#: Treatments of the checkpoint: (flip average + blendshape clamp, re-crop passes). The mean face is scored raw
#: (its prediction does not depend on the crop: a re-crop moves its crop by under 0.3 %).
TREATMENTS = {"raw": (False, 0), "reconstruct": (True, 0), "reconstruct + re-crop": (True, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="checkpoint from 'msma train' (the mean face is added)")
    parser.add_argument("--root", default=None, help="AFLW2000-3D folder (default ../shared/testdata/aflw2000_3d)")
    parser.add_argument("--tag", default=None, help="result name (default: the checkpoint's experiment)")
    parser.add_argument("--limit", type=int, default=None, help="the first N photos only")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shared = Path(os.environ.get("MSMA_SHARED", ROOT.parent / "shared"))
    root = Path(args.root) if args.root else shared / "testdata" / "aflw2000_3d"
    device = torch.device("cpu")

    nets = {"checkpoint": load_model(args.ckpt, device), "mean face": load_model("mean", device)}
    tag = args.tag or str(nets["checkpoint"].config.get("name") or "checkpoint")
    size = nets["checkpoint"].image_size  # the mean face is scored on the checkpoint's crops
    results: dict[str, Any] = {}
    rows = []
    for crop in ("detect", *[c for c in CROPS if c != "detect"]):
        for net_name, net in nets.items():
            treatments = TREATMENTS if net_name == "checkpoint" else {"-": (False, 0)}
            for t_name, (on, recrop) in treatments.items():
                if recrop and crop == "detect":
                    continue  # detect crops are aligned on detected landmarks: nothing to re-crop
                res = evaluate_aflw2000(
                    net,
                    root,
                    crop,
                    size,
                    device,
                    16,
                    args.limit,
                    flip_average=on,
                    clamp_expressions=on,
                    recrop=recrop,
                )
                key = f"{crop} / {net_name} / {t_name}"
                results[key] = res
                bins = [None if b != b else round(float(b), 2) for b in res["bins"]]
                rows.append([crop, net_name, t_name, *bins, round(float(res["mean"]), 2), list(res["counts"])])
                print(rows[-1], flush=True)
    columns = ["crop", "network", "treatment", "0-30", "30-60", "60-90", "mean over images", "photos per bin"]
    table = markdown_table(columns, rows)
    print(table)
    payload = header(device, "aflw2000_crops", {"ckpt": args.ckpt, "root": str(root), "limit": args.limit})
    payload.update({"table": table, "results": results})
    path = write_json(f"aflw2000-crops-{tag}-{device_slug(device)}", payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
