"""Full training step: encoder + face model + render + losses + backward + optimiser step, per experiment.

Each configuration runs in its own subprocess so the peak memory (CPU: max RSS; CUDA: max allocated) belongs to it
alone. Batches are real synthetic faces (rendered once before timing). The renderer's share of the step is measured
by timing its forward+backward alone on the same step's inputs.

    python benchmarks/train_step.py                       # CPU defaults: msma_lka vs deep3d_r50, batch 8 at 224
    python benchmarks/train_step.py --batch 32 --repeats 5
    python benchmarks/train_step.py --device cuda --precision bf16-mixed --channels-last --batches 32 64 128

Writes benchmarks/results/train_step-<device>.json and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_slug, header, markdown_table, median, sync, time_call, write_json


def _synthetic_batch(face_model: Any, batch: int, size: int) -> Any:
    from msma.data.batch import collate_samples
    from msma.data.synthetic import SyntheticFaceDataset

    ds = SyntheticFaceDataset(face_model, num_samples=batch, seed=123, image_size=size, cache_dir=None)
    return collate_samples([ds[i] for i in range(batch)])


def run_one(
    experiment: str,
    batch: int,
    size: int,
    repeats: int,
    warmup: int,
    device_name: str,
    precision: str,
    channels_last: bool,
    backbone: str | None,
) -> dict[str, Any]:
    """Times one configuration in this process; returns a result row."""
    from msma.config import compose_experiment, to_typed
    from msma.training.checkpoint import build_module

    device = torch.device(device_name)
    overrides = [
        f"data.image_size={size}",
        f"data.batch_size={batch}",
        "model.pretrained=false",
        "renderer.backend=" + ("auto" if device.type == "cuda" else "torch"),
    ]
    if backbone:
        overrides.append(f"model.backbone={backbone}")
    cfg = compose_experiment(experiment, overrides)
    module = build_module(to_typed(cfg)).to(device).train()
    if channels_last:
        module.encoder.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    data = _synthetic_batch(module.face_model, batch, size).to(device)
    if channels_last:
        data = dataclasses.replace(data, image=data.image.contiguous(memory_format=torch.channels_last))
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    amp_dtype = torch.bfloat16 if precision.startswith("bf16") else None

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss_out, _ = module.compute_loss(data)
        loss_out.total.backward()
        opt.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = time_call(step, device, repeats, warmup)

    # Renderer alone (forward + backward w.r.t. clip positions and colours) on this step's geometry.
    with torch.no_grad():
        face = module.face_model(module.encoder(data.image), image_size=size)
    clip = face.clip.detach().requires_grad_(True)
    colors = face.color.detach().requires_grad_(True)
    tri = module.face_model.tri

    def render_fb() -> None:
        out = module.renderer(clip, tri, colors, face.normals.detach(), resolution=size)
        (out.image.mean() + out.mask.mean()).backward()

    render_times = time_call(render_fb, device, repeats, max(1, warmup))
    sync(device)
    peak = (
        (torch.cuda.max_memory_allocated(device) / 2**20)
        if device.type == "cuda"
        else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    )
    step_s = median(times)
    return {
        "experiment": experiment,
        "encoder": str(cfg.model.name),
        "backbone": str(cfg.model.backbone),
        "batch": batch,
        "size": size,
        "precision": precision,
        "channels_last": channels_last,
        "step_ms_median": step_s * 1e3,
        "step_ms_all": [t * 1e3 for t in times],
        "img_per_s": batch / step_s,
        "render_fwd_bwd_ms_median": median(render_times) * 1e3,
        "render_share": median(render_times) / step_s,
        "peak_memory_mib": peak,
        "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process max RSS",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", nargs="+", default=["msma_lka", "deep3d_r50"])
    parser.add_argument("--batch", type=int, default=8, help="batch size (CPU default 8; see --batches on GPU)")
    parser.add_argument("--batches", type=int, nargs="*", default=None, help="several batch sizes (GPU: 32 64 128)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--backbone", default=None, help="override the experiments' backbone")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help="result name (default train_step-<device>)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    if args.child:  # one configuration, result as JSON on the last stdout line
        row = run_one(
            args.experiments[0],
            args.batch,
            args.size,
            args.repeats,
            args.warmup,
            args.device,
            args.precision,
            args.channels_last,
            args.backbone,
        )
        print(json.dumps(row))
        return 0

    rows = []
    for batch in args.batches or [args.batch]:
        for exp in args.experiments:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                "--experiments",
                exp,
                "--batch",
                str(batch),
                "--size",
                str(args.size),
                "--repeats",
                str(args.repeats),
                "--warmup",
                str(args.warmup),
                "--device",
                args.device,
                "--precision",
                args.precision,
            ]
            if args.channels_last:
                cmd.append("--channels-last")
            if args.backbone:
                cmd += ["--backbone", args.backbone]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "offline"})
            if proc.returncode != 0:
                print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                return proc.returncode
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{exp:>20} batch {batch:>3}: {row['step_ms_median']:.0f} ms/step, {row['img_per_s']:.1f} img/s",
                flush=True,
            )

    base = {(r["batch"]): r for r in rows if r["encoder"] == "deep3d_r50"}
    for r in rows:
        ref = base.get(r["batch"])
        r["step_ratio_vs_deep3d_r50"] = r["step_ms_median"] / ref["step_ms_median"] if ref else None
    settings = {k: v for k, v in vars(args).items() if k not in ("child", "out")}
    payload = header(device, "train_step", settings) | {"rows": rows}
    name = args.out or f"train_step-{device_slug(device)}" + ("-bf16" if args.precision.startswith("bf16") else "")
    path = write_json(name, payload)
    table = markdown_table(
        [
            "experiment",
            "backbone",
            "batch",
            "size",
            "ms/step",
            "img/s",
            "x deep3d_r50",
            "render fwd+bwd ms",
            "render share",
            "peak MiB",
        ],
        [
            [
                r["experiment"],
                r["backbone"],
                r["batch"],
                r["size"],
                r["step_ms_median"],
                r["img_per_s"],
                r["step_ratio_vs_deep3d_r50"] if r["step_ratio_vs_deep3d_r50"] is not None else "-",
                r["render_fwd_bwd_ms_median"],
                f"{100 * r['render_share']:.1f} %",
                r["peak_memory_mib"],
            ]
            for r in rows
        ],
    )
    print(table)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
