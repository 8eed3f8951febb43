"""Encoder cost: parameters, FLOPs and training-step throughput of every encoder and the MSMA ablations.

Usage::

    python benchmarks/model.py                       # batch 32 at 224, 3 timed steps per encoder
    python benchmarks/model.py --batch 4 --size 128 --repeats 1 --only deep3d_r50 msma_lka
    python benchmarks/model.py --no-timing --out benchmarks/results/model-cpu-flops.json   # params + FLOPs only

A training step is forward + backward of a scalar loss on all coefficients + an Adam update (the encoder
part of a real step; renderer and losses are excluded). All encoders are measured in the same process, one
after the other (deep3d_r50 before and after the others), over ``--rounds`` interleaved rounds so that load
drifts hit them alike; the figure is the median of all timed steps.
FLOPs (forward, and forward + backward) are counted with ``torch.utils.flop_counter.FlopCounterMode`` per
image (on a batch of 2, halved; multiply-adds count as 2 FLOPs). Results: a table on stdout and JSON (device, versions, date) in
``benchmarks/results/model-<device>.json`` unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from msma.face_model.params import CoeffLayout
from msma.models import build_encoder
from msma.models.encoder import FaceEncoder

#: (label, encoder name, options). deep3d_r50 is the reference of the ratios.
#: The authors' networks (deep3d_r50, msma_lka, mlanet) and msma's variants (msma_spatial + ablations, mlanet_timm).
VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("deep3d_r50", "deep3d_r50", {}),
    ("msma_lka", "msma_lka", {}),
    ("mlanet", "mlanet", {}),
    ("msma_spatial", "msma_spatial", {}),
    ("msma_spatial/attn=lka", "msma_spatial", {"attention": "lka"}),
    ("msma_spatial/attn=none", "msma_spatial", {"attention": "none"}),
    ("msma_spatial/no_fusion", "msma_spatial", {"fusion": False}),
    ("msma_spatial/attention_on_pooled", "msma_spatial", {"attention_on_pooled": True}),
    ("msma_spatial/single_scale", "msma_spatial", {"single_scale": True}),
    ("mlanet_timm", "mlanet_timm", {}),
]
#: BFM layout of Deep3DFaceRecon (257 coefficients).
BFM_LAYOUT = CoeffLayout(80, 64, 80)


@dataclass
class Row:
    label: str
    encoder: str
    options: dict[str, Any]
    params_m: float
    gflops_fwd: float
    gflops_train: float
    step_s_median: float
    step_s_all: list[float]
    images_per_s: float
    ratio_step_vs_deep3d: float = float("nan")
    ratio_flops_vs_deep3d: float = float("nan")


def _loss(enc: FaceEncoder, x: torch.Tensor) -> torch.Tensor:
    out = enc(x)
    return sum((t.square().mean() for _, t in out.items()), torch.zeros((), device=x.device))


def count_flops(enc: FaceEncoder, size: int, device: torch.device) -> tuple[float, float]:
    """(forward, forward + backward) GFLOPs per image at ``size`` (counted on a batch of 2 and halved: training
    BatchNorm on 1x1 maps, e.g. MLANet's AFF global branch, needs more than one value per channel)."""
    x = torch.rand(2, 3, size, size, device=device)
    enc.eval()
    with FlopCounterMode(display=False) as fwd:
        with torch.no_grad():
            enc(x)
    enc.train()
    with FlopCounterMode(display=False) as both:
        _loss(enc, x).backward()
    enc.zero_grad(set_to_none=True)
    return fwd.get_total_flops() / 2e9, both.get_total_flops() / 2e9


def time_step(enc: FaceEncoder, opt: torch.optim.Optimizer, x: torch.Tensor) -> float:
    """Seconds of one forward + backward + optimiser step."""
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    _loss(enc, x).backward()
    opt.step()
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - t0


def _perturb_heads(enc: FaceEncoder) -> None:
    # Non-zero heads/scales so the backward pass covers the whole network, as in real training.
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if name.startswith("heads.") or name.endswith("scale"):
                p.normal_(0.0, 1e-3)


def paired_ratio(backbone: str, x: torch.Tensor, device: torch.device, pairs: int) -> dict[str, Any]:
    """Times deep3d_r50 and msma_lka alternately (both held in memory); the ratio of each adjacent pair
    cancels most of the load drift of a shared machine. Returns the per-pair times and their median ratio."""
    models = []
    for name in ("deep3d_r50", "msma_lka"):
        torch.manual_seed(0)
        enc = build_encoder(name, BFM_LAYOUT, backbone=backbone).to(device).train()
        _perturb_heads(enc)
        opt = torch.optim.Adam(enc.parameters(), lr=1e-6)
        time_step(enc, opt, x)
        models.append((enc, opt))
    ref_t, msma_t = [], []
    for i in range(pairs):
        # alternate which one goes first so neither always follows the other
        first, second = (0, 1) if i % 2 == 0 else (1, 0)
        t = {first: time_step(*models[first], x), second: time_step(*models[second], x)}
        ref_t.append(t[0])
        msma_t.append(t[1])
        print(f"pair {i + 1}/{pairs}: deep3d {t[0]:.3f} s, msma {t[1]:.3f} s", file=sys.stderr, flush=True)
    ratios = [m / r for m, r in zip(msma_t, ref_t)]
    return {
        "pairs": pairs,
        "deep3d_r50_step_s": ref_t,
        "msma_lka_step_s": msma_t,
        "ratios": ratios,
        "ratio_median": statistics.median(ratios),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per encoder and round (after a warm-up step)")
    ap.add_argument("--rounds", type=int, default=1, help="measure every encoder this many times, interleaved")
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--only", nargs="*", help="labels to run (default all; deep3d_r50 is always included)")
    ap.add_argument(
        "--paired",
        type=int,
        default=0,
        help="also time deep3d_r50 and msma_lka alternately, step by step, this many pairs (robust on busy machines)",
    )
    ap.add_argument("--no-timing", action="store_true", help="parameters and FLOPs only (no training steps)")
    ap.add_argument("--out", type=Path, default=None, help="JSON output (default benchmarks/results/model-<dev>.json)")
    ap.add_argument("--note", default="", help="free text stored in the JSON (e.g. 'machine shared with other jobs')")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    variants = [v for v in VARIANTS if not args.only or v[0] in args.only or v[0] == "deep3d_r50"]
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)

    # One encoder in memory at a time (a shared machine); deep3d_r50 is measured at the start and the end of
    # every round so that load drift shows up in its own spread and affects the ratios as little as possible.
    rows: dict[str, Row] = {}
    order = variants + [v for v in variants if v[0] == "deep3d_r50"]
    for r in range(args.rounds):
        for label, name, options in order:
            torch.manual_seed(0)
            enc = build_encoder(name, BFM_LAYOUT, backbone=args.backbone, **options).to(device)
            _perturb_heads(enc)
            if label not in rows:
                params = sum(p.numel() for p in enc.parameters()) / 1e6
                g_fwd, g_train = count_flops(enc, args.size, device)
                rows[label] = Row(label, name, options, params, g_fwd, g_train, float("nan"), [], float("nan"))
                print(f"{label}: {params:.2f} M params, {g_fwd:.2f} GFLOPs fwd", file=sys.stderr, flush=True)
            if args.no_timing:
                rows[label].step_s_all.append(float("nan"))
                del enc
                continue
            enc.train()
            opt = torch.optim.Adam(enc.parameters(), lr=1e-6)
            time_step(enc, opt, x)  # warm-up (allocator, kernels, cudnn)
            times = [time_step(enc, opt, x) for _ in range(args.repeats)]
            rows[label].step_s_all.extend(times)
            print(f"round {r + 1}/{args.rounds} {label}: {[round(t, 3) for t in times]} s", file=sys.stderr, flush=True)
            del enc, opt

    paired: dict[str, Any] | None = None
    if args.paired > 0:
        paired = paired_ratio(args.backbone, x, device, args.paired)
        print(f"paired msma_lka / deep3d_r50 step ratio: median {paired['ratio_median']:.3f}", file=sys.stderr)

    ref = rows["deep3d_r50"]
    for row in rows.values():
        row.step_s_median = statistics.median(row.step_s_all)
        row.images_per_s = args.batch / row.step_s_median
    ref_step = ref.step_s_median
    for row in rows.values():
        row.ratio_step_vs_deep3d = row.step_s_median / ref_step
        row.ratio_flops_vs_deep3d = row.gflops_train / ref.gflops_train

    header = f"{'encoder':30s} {'params M':>9s} {'GFLOPs fwd':>10s} {'GFLOPs f+b':>10s} {'step s':>8s} {'img/s':>7s} {'x deep3d':>8s} {'FLOPs x':>8s}"
    print(
        f"batch {args.batch} at {args.size} px, {args.backbone}, {device_name(device)}, median of {len(ref.step_s_all)}"
    )
    print(header)
    for row in rows.values():
        print(
            f"{row.label:30s} {row.params_m:9.2f} {row.gflops_fwd:10.2f} {row.gflops_train:10.2f} "
            f"{row.step_s_median:8.3f} {row.images_per_s:7.2f} {row.ratio_step_vs_deep3d:8.2f} {row.ratio_flops_vs_deep3d:8.2f}"
        )

    result = {
        "benchmark": "encoder training step (forward + backward + Adam), FLOPs per image",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device),
        "device_type": device.type,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "timm": __import__("timm").__version__,
        },
        "batch": args.batch,
        "size": args.size,
        "backbone": args.backbone,
        "repeats": len(ref.step_s_all),
        "note": args.note,
        "target": "msma_lka step <= 1.5 x deep3d_r50 step",
        "target_met": (paired["ratio_median"] if paired else rows["msma_lka"].ratio_step_vs_deep3d) <= 1.5
        if "msma_lka" in rows
        else None,
        "rows": [asdict(r) for r in rows.values()],
        "paired_msma_vs_deep3d": paired,
    }
    out = args.out or Path(__file__).parent / "results" / f"model-{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if paired:
        print(
            f"paired msma_lka / deep3d_r50 training-step ratio (median of {args.paired}): {paired['ratio_median']:.3f}"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
