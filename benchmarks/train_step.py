"""Full training step: encoder + face model + render + losses + backward + optimiser step, per experiment.

Each configuration runs in its own subprocess so the peak memory (CPU: max RSS; CUDA: max allocated) belongs to it
alone. Batches are real synthetic faces (rendered once before timing). The renderer's share of the step is measured
by timing its forward+backward alone on the same step's inputs.

    python benchmarks/train_step.py                       # CPU defaults: msma_lka vs deep3d_r50, batch 8 at 224
    python benchmarks/train_step.py --batch 32 --repeats 5
    python benchmarks/train_step.py --device cuda --precisions 32 bf16-mixed --channels-last --batches 32 64 128

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
from common import RESULTS, device_slug, header, markdown_table, median, sync, time_call, write_json, write_markdown


def _synthetic_batch(face_model: Any, batch: int, size: int, device: torch.device, unique: int = 32) -> Any:
    """``batch`` synthetic faces at ``size``: ``min(batch, unique)`` distinct faces rendered on ``device`` (nvdiffrast
    on CUDA, torch on the CPU), repeated to fill the batch (rendering each sample costs more than a training step)."""
    from msma.data.batch import collate_samples
    from msma.data.synthetic import SyntheticFaceDataset

    n = min(batch, unique)

    backend = "nvdiffrast" if device.type == "cuda" else "torch"
    ds = SyntheticFaceDataset(
        face_model,
        num_samples=n,
        seed=123,
        image_size=size,
        cache_dir=None,
        renderer_backend=backend,
        device=device,
        render_batch=min(n, 64),
        progress=False,
    )
    samples = [ds[i] for i in range(n)]
    return collate_samples([samples[i % n] for i in range(batch)])


def _slice(data: Any, n: int) -> Any:
    """The first ``n`` samples of a collated batch (every tensor field sliced on dim 0)."""
    fields = {}
    for f in dataclasses.fields(data):
        v = getattr(data, f.name)
        fields[f.name] = v[:n] if (isinstance(v, torch.Tensor) and v.dim() > 0) or isinstance(v, (tuple, list)) else v
    return dataclasses.replace(data, **fields)


def _measure(
    module: Any,
    opt: torch.optim.Optimizer,
    data: Any,
    amp_dtype: torch.dtype | None,
    device: torch.device,
    size: int,
    repeats: int,
    warmup: int,
) -> tuple[list[float], list[float], list[float], float]:
    """Seconds of the full step, of the encoder's forward+backward and of the renderer's forward+backward, and the
    peak memory (MiB) of the full step."""

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss_out, _ = module.compute_loss(data)
        loss_out.total.backward()
        opt.step()

    def encoder_fb() -> None:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            params = module.encoder(data.image)
        torch.stack([t.float().square().mean() for _, t in params.items()]).sum().backward()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = time_call(step, device, repeats, warmup)
    peak = (
        (torch.cuda.max_memory_allocated(device) / 2**20)
        if device.type == "cuda"
        else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    )
    enc_times = time_call(encoder_fb, device, repeats, 1)
    opt.zero_grad(set_to_none=True)

    # Renderer alone (forward + backward w.r.t. clip positions and colours) on this step's geometry.
    with torch.no_grad():
        face = module.face_model(module.encoder(data.image), image_size=size)
    clip = face.clip.detach().float().requires_grad_(True)
    colors = face.color.detach().float().requires_grad_(True)
    normals = face.normals.detach().float()
    tri = module.face_model.tri

    def render_fb() -> None:
        out = module.renderer(clip, tri, colors, normals, resolution=size)
        (out.image.mean() + out.mask.mean()).backward()

    render_times = time_call(render_fb, device, repeats, 1)
    sync(device)
    return times, enc_times, render_times, peak


def run_experiment(
    experiment: str,
    batches: list[int],
    precisions: list[str],
    size: int,
    repeats: int,
    warmup: int,
    device_name: str,
    channels_last: bool,
    backbone: str | None,
) -> list[dict[str, Any]]:
    """Times every (batch, precision) configuration of one experiment in this process; returns result rows.

    One synthetic batch of the largest size is rendered once and sliced. Per configuration: the full step
    (encoder + face model + render + losses + backward + Adam step), the encoder's forward+backward alone, and the
    renderer's forward+backward alone on the step's geometry, so the rest (face model, losses, optimiser) follows.
    """
    from msma.config import compose_experiment, to_typed
    from msma.training.checkpoint import build_module
    from msma.training.module import fused_adam_supported

    device = torch.device(device_name)
    # The embedded default (ICT face model, synthetic faces): the batches are synthetic ICT faces, and the paper
    # experiments would otherwise ask for BFM files, photos and ArcFace weights. The network is the experiment's.
    overrides = [
        "+preset=embedded",
        f"data.image_size={size}",
        f"data.batch_size={max(batches)}",
        "model.pretrained=false",
        "renderer.backend=" + ("auto" if device.type == "cuda" else "torch"),
    ]
    if backbone:
        overrides.append(f"model.backbone={backbone}")
    cfg = compose_experiment(experiment, overrides)
    module = build_module(to_typed(cfg)).to(device).train()
    if channels_last:
        module.encoder.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    full = _synthetic_batch(module.face_model, max(batches), size, device).to(device)
    trainable = [p for p in module.parameters() if p.requires_grad]
    # The optimiser `msma train` builds (FaceReconModule.configure_optimizers): the fused update where it exists.
    opt = torch.optim.Adam(trainable, lr=1e-4, fused=fused_adam_supported(trainable) or None)
    n_params = sum(p.numel() for p in module.encoder.parameters() if p.requires_grad)
    rows = []
    for precision in precisions:
        amp_dtype = torch.bfloat16 if precision.startswith("bf16") else None
        for batch in batches:
            data = _slice(full, batch)
            if channels_last:
                data = dataclasses.replace(data, image=data.image.contiguous(memory_format=torch.channels_last))

            times, enc_times, render_times, peak = _measure(module, opt, data, amp_dtype, device, size, repeats, warmup)
            step_s, enc_s, ren_s = median(times), median(enc_times), median(render_times)
            row = {
                "experiment": experiment,
                "encoder": str(cfg.model.name),
                "backbone": str(cfg.model.backbone),
                "encoder_params": n_params,
                "batch": batch,
                "size": size,
                "precision": precision,
                "channels_last": channels_last,
                "step_ms_median": step_s * 1e3,
                "step_ms_all": [t * 1e3 for t in times],
                "img_per_s": batch / step_s,
                "encoder_fwd_bwd_ms_median": enc_s * 1e3,
                "encoder_share": enc_s / step_s,
                "render_fwd_bwd_ms_median": ren_s * 1e3,
                "render_share": ren_s / step_s,
                "rest_share": max(0.0, 1.0 - (enc_s + ren_s) / step_s),
                "peak_memory_mib": peak,
                "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process max RSS",
            }
            rows.append(row)
            print(
                f"{experiment:>20} {precision:>10} batch {batch:>3}: {row['step_ms_median']:.1f} ms/step, "
                f"{row['img_per_s']:.1f} img/s (encoder {100 * row['encoder_share']:.0f} %, "
                f"render {100 * row['render_share']:.0f} %)",
                file=sys.stderr,
                flush=True,
            )
    return rows


def _write(rows: list[dict[str, Any]], args: argparse.Namespace, device: torch.device, complete: bool) -> Path:
    """Writes the rows measured so far (with their ratio to deep3d_r50 where it was measured) as the result JSON."""
    base = {(r["batch"], r["precision"]): r for r in rows if r["encoder"] == "deep3d_r50"}
    for r in rows:
        ref = base.get((r["batch"], r["precision"]))
        r["step_ratio_vs_deep3d_r50"] = r["step_ms_median"] / ref["step_ms_median"] if ref else None
    settings = {k: v for k, v in vars(args).items() if k not in ("child", "out", "out_dir")}
    payload = header(device, "train_step", settings) | {"complete": complete, "rows": rows}
    bf16_only = all(p.startswith("bf16") for p in args.precisions)
    name = args.out or f"train_step-{device_slug(device)}" + ("-bf16" if bf16_only else "")
    return write_json(name, payload, args.out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", nargs="+", default=["msma_lka", "deep3d_r50"])
    parser.add_argument("--batch", type=int, default=8, help="batch size (CPU default 8; see --batches on GPU)")
    parser.add_argument("--batches", type=int, nargs="*", default=None, help="several batch sizes (GPU: 32 64 128)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", nargs="+", default=["32"], choices=["32", "bf16-mixed"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--backbone", default=None, help="override the experiments' backbone")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help="result name (default train_step-<device>[-bf16])")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="folder for the JSON (and a .md table)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    if args.child:  # one experiment, every configuration; result rows as JSON on the last stdout line
        rows = run_experiment(
            args.experiments[0],
            args.batches or [args.batch],
            args.precisions,
            args.size,
            args.repeats,
            args.warmup,
            args.device,
            args.channels_last,
            args.backbone,
        )
        print(json.dumps(rows))
        return 0

    rows = []
    for exp in args.experiments:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--experiments",
            exp,
            "--batches",
            *map(str, args.batches or [args.batch]),
            "--precisions",
            *args.precisions,
            "--size",
            str(args.size),
            "--repeats",
            str(args.repeats),
            "--warmup",
            str(args.warmup),
            "--device",
            args.device,
        ]
        if args.channels_last:
            cmd.append("--channels-last")
        if args.backbone:
            cmd += ["--backbone", args.backbone]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "WANDB_MODE": "offline"})
        if proc.returncode != 0:
            print(f"train_step: {exp} failed (exit {proc.returncode}); its output is above", file=sys.stderr)
            return proc.returncode
        rows += json.loads(proc.stdout.strip().splitlines()[-1])
        path = _write(rows, args, device, complete=exp == args.experiments[-1])  # a run cut short keeps its rows
    table = markdown_table(
        [
            "experiment",
            "backbone",
            "precision",
            "batch",
            "size",
            "ms/step",
            "img/s",
            "x deep3d_r50",
            "encoder share",
            "render fwd+bwd ms",
            "render share",
            "peak MiB",
        ],
        [
            [
                r["experiment"],
                r["backbone"],
                r["precision"],
                r["batch"],
                r["size"],
                r["step_ms_median"],
                r["img_per_s"],
                r["step_ratio_vs_deep3d_r50"] if r["step_ratio_vs_deep3d_r50"] is not None else "-",
                f"{100 * r['encoder_share']:.1f} %",
                r["render_fwd_bwd_ms_median"],
                f"{100 * r['render_share']:.1f} %",
                r["peak_memory_mib"],
            ]
            for r in rows
        ],
    )
    print(table)
    if args.out_dir != RESULTS:
        write_markdown(path.stem, table, args.out_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
