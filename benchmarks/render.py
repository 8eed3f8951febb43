"""Renderer speed: forward and forward+backward of ``MeshRenderer`` on the ICT face, per backend and batch size.

Scene: the ICT face model (``load_face_model("ict")``) with random identity and small random poses, rendered at
224x224 (colour, depth and normals interpolated, antialias on). Forward = ``MeshRenderer.forward`` from clip
positions and per-vertex colours/normals; forward+backward adds the backward of a photometric-style loss to the
clip positions, colours and normals. Times are medians over repeated runs (wall clock, and process CPU time), per
batch and per image. Writes ``benchmarks/results/render-<device>.json``.

Usage: ``python benchmarks/render.py [--batches 1 8 32] [--repeats 15] [--device cpu|cuda] [--threads N]``;
``python benchmarks/render.py --picture docs/images/render_ict_mean.png`` renders the README picture.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, device_slug, header, markdown_table, median, sync, write_json, write_markdown


def _backends(device: torch.device) -> list[str]:
    if device.type != "cuda":
        return ["torch"]
    from msma.render.nvdiffrast_raster import nvdiffrast_installed

    return ["nvdiffrast", "torch"] if nvdiffrast_installed() else ["torch"]


def _scene(
    batch: int, size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """ICT faces: clip (B, V, 4), tri (F, 3) int32, colour (B, V, 3), normals (B, V, 3) on ``device``."""
    from msma.face_model import load_face_model

    model = load_face_model("ict").eval()
    g = torch.Generator().manual_seed(batch)
    base = model.layout.zeros(batch)
    angles = (torch.rand(batch, 3, generator=g) - 0.5) * torch.tensor([0.3, 0.8, 0.2])
    params = base.replace(id=torch.randn(base.id.shape, generator=g) * 0.5, angles=angles)
    with torch.no_grad():
        face = model(params, image_size=size)
    return (
        face.clip.to(device),
        model.tri.to(device=device, dtype=torch.int32),
        face.color.to(device),
        face.normals.to(device),
    )


def _time_renderer(
    renderer: torch.nn.Module,
    clip: torch.Tensor,
    tri: torch.Tensor,
    color: torch.Tensor,
    normals: torch.Tensor,
    size: int,
    device: torch.device,
    repeats: int,
    warmup: int,
) -> tuple[list[float], list[float]]:
    """Wall-clock seconds of forward and of forward+backward (photometric-style loss) calls."""
    target = torch.rand(clip.shape[0], 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)

    def forward() -> None:
        with torch.no_grad():
            renderer(clip, tri, color, normals, resolution=size)

    def forward_backward() -> None:
        c = clip.detach().requires_grad_(True)
        col = color.detach().requires_grad_(True)
        nrm = normals.detach().requires_grad_(True)
        out = renderer(c, tri, col, nrm, resolution=size)
        loss = ((out.image - target) * out.mask).square().mean() + out.normals.mean()
        loss.backward()

    return _timed(forward, device, repeats, warmup), _timed(forward_backward, device, repeats, warmup)


def _timed(fn: Callable[[], None], device: torch.device, repeats: int, warmup: int) -> tuple[list[float], list[float]]:
    """(wall-clock seconds, process CPU seconds) of ``repeats`` calls after ``warmup`` untimed ones.

    On a shared CPU the wall clock includes the time spent waiting for a core; the process CPU time (summed over
    torch's threads) does not, so with one thread it approximates the quiet-machine time.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def run(
    batches: list[int], size: int, repeats: int, warmup: int, device: torch.device, backends: list[str] | None = None
) -> dict[str, Any]:
    """Times every (backend, batch) pair; returns the JSON payload (without writing it)."""
    from msma.render import MeshRenderer

    rows: list[dict[str, Any]] = []
    for name in backends or _backends(device):
        renderer = MeshRenderer(backend=name, antialias=True)
        for batch in batches:
            clip, tri, color, normals = _scene(batch, size, device)
            (fwd, fwd_cpu), (fb, fb_cpu) = _time_renderer(
                renderer, clip, tri, color, normals, size, device, repeats, warmup
            )
            row = {
                "backend": name,
                "batch": batch,
                "size": size,
                "forward_ms": 1e3 * median(fwd),
                "forward_backward_ms": 1e3 * median(fb),
                "forward_ms_per_image": 1e3 * median(fwd) / batch,
                "forward_backward_ms_per_image": 1e3 * median(fb) / batch,
                "forward_cpu_ms": 1e3 * median(fwd_cpu),
                "forward_backward_cpu_ms": 1e3 * median(fb_cpu),
                "forward_backward_cpu_ms_per_image": 1e3 * median(fb_cpu) / batch,
                "repeats": repeats,
            }
            rows.append(row)
            print(
                f"{name:>10} B={batch:<3} fwd {row['forward_ms']:8.2f} ms ({row['forward_ms_per_image']:.2f}/img)  "
                f"fwd+bwd {row['forward_backward_ms']:8.2f} ms ({row['forward_backward_ms_per_image']:.2f}/img)  "
                f"cpu time fwd+bwd {row['forward_backward_cpu_ms_per_image']:.2f}/img",
                flush=True,
            )
    settings = {"size": size, "batches": batches, "repeats": repeats, "warmup": warmup, "antialias": True}
    payload = header(device, "render", settings)
    if device.type == "cpu" and hasattr(os, "getloadavg"):
        payload["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    payload["results"] = rows
    return payload


def profile_forward_backward(batch: int, size: int, device: torch.device, backend: str, steps: int = 5) -> list[dict]:
    """The ops that take the most GPU time in ``steps`` forward+backward calls (torch.profiler), largest first."""
    from torch.profiler import ProfilerActivity, profile

    from msma.render import MeshRenderer

    renderer = MeshRenderer(backend=backend, antialias=True)
    clip, tri, color, normals = _scene(batch, size, device)
    target = torch.rand(batch, 3, size, size, device=device)

    def fb() -> None:
        c, col = clip.detach().requires_grad_(True), color.detach().requires_grad_(True)
        out = renderer(c, tri, col, normals, resolution=size)
        (((out.image - target) * out.mask).square().mean() + out.normals.mean()).backward()

    for _ in range(3):
        fb()
    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fb()
        sync(device)
    rows = []
    for evt in prof.key_averages():
        dev_us = getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0)
        if dev_us > 0:
            rows.append({"op": evt.key[:80], "calls": evt.count // steps, "gpu_ms_per_call": dev_us / 1e3 / steps})
    rows.sort(key=lambda r: -r["gpu_ms_per_call"])
    return rows[:12]


def render_picture(path: Path, size: int = 320) -> None:
    """Writes the README picture: the ICT mean face with Deep3D SH lighting (torch backend), three poses and lights,
    then its normals and depth (near = bright), side by side on white."""
    import numpy as np
    from PIL import Image

    from msma.face_model import load_face_model
    from msma.render import MeshRenderer

    model = load_face_model("ict").eval()
    base = model.layout.zeros(3)
    sh = torch.zeros(3, 3, 9)  # Deep3D SH order: [1, -y, z, -x, ...] per colour channel
    sh[:, :, 1] = -0.16  # light from above
    sh[:, :, 2] = 0.10  # from the front
    sh[:, :, 3] = torch.tensor([0.18, 0.0, -0.18])[:, None]  # from the viewer's left, none, from the right
    sh[:, 0, 0] += 0.05  # slightly warm
    angles = torch.tensor([[0.0, 0.0, 0.0], [0.05, 0.55, 0.0], [-0.1, -0.35, 0.05]])
    params = base.replace(sh=sh.reshape(3, 27), angles=angles)
    with torch.no_grad():
        face = model(params, image_size=size)
        out = MeshRenderer("torch", antialias=True).render(face, model.tri)
    white = torch.ones_like(out.image)
    shaded = out.image.clamp(0, 1) * out.mask + white * (1 - out.mask)
    normals = (out.normals * 0.5 + 0.5) * out.mask + (1 - out.mask)
    covered = out.rast[0, ..., 3] > 0
    depth = out.depth[0, 0]
    near, far = depth[covered].min(), depth[covered].max()
    depth_img = torch.where(covered, 0.15 + 0.85 * (far - depth) / (far - near), torch.ones_like(depth))
    tiles = [shaded[0], shaded[1], shaded[2], normals[0], depth_img[None].expand(3, -1, -1)]
    row = torch.cat(tiles, dim=2).permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((row * 255 + 0.5).astype(np.uint8)).save(path, optimize=True)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backends", nargs="+", default=None, choices=["torch", "nvdiffrast"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--note", default="", help="free text stored in the JSON (e.g. machine load)")
    parser.add_argument("--picture", type=Path, default=None, help="only write the README picture to this PNG")
    parser.add_argument("--profile", action="store_true", help="CUDA: also profile fwd+bwd of the first backend")
    args = parser.parse_args(argv)
    if args.picture is not None:
        render_picture(args.picture)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    payload = run(args.batches, args.size, args.repeats, args.warmup, device, args.backends)
    if args.note:
        payload["note"] = args.note
    if args.profile and device.type == "cuda":
        backend = (args.backends or _backends(device))[0]
        prof = profile_forward_backward(args.batches[0], args.size, device, backend)
        payload["profile"] = {"backend": backend, "batch": args.batches[0], "top_gpu_ops_per_call": prof}
        for r in prof:
            print(f"  {r['gpu_ms_per_call']:8.3f} ms  x{r['calls']:<3} {r['op']}")
    cols = ["backend", "batch", "fwd ms", "fwd ms/img", "fwd+bwd ms", "fwd+bwd ms/img", "fwd+bwd CPU-time ms/img"]
    table = [
        [
            r["backend"],
            r["batch"],
            r["forward_ms"],
            r["forward_ms_per_image"],
            r["forward_backward_ms"],
            r["forward_backward_ms_per_image"],
            r["forward_backward_cpu_ms_per_image"],
        ]
        for r in payload["results"]
    ]
    text = markdown_table(cols, table)
    print(text)
    path = write_json(f"render-{device_slug(device)}", payload, args.out)
    if args.out != RESULTS:
        write_markdown(f"render-{device_slug(device)}", text, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
