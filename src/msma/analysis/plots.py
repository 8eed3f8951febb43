"""Plots for the notebooks: training curves, per-yaw-bin bars, the qualitative grid, meshes, saved figures."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from msma.analysis.faces import YAW_BIN_LABELS, EvalFaces
from msma.pipeline import FacePipeline

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from msma.face_model.params import FaceParams


def plot_training_curves(
    logs: Mapping[str, pd.DataFrame], metrics: Sequence[str] = ("train/loss", "val/nme")
) -> Figure:
    """Training curves: one panel per metric, one line per run (x: optimiser step).

    Args:
        logs: label -> :func:`read_metrics_csv` frame.
        metrics: columns to plot (missing ones leave an empty, labelled panel).
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for label, df in logs.items():
            if metric in df.columns:
                d = df[["step", metric]].dropna()
                if len(d):
                    ax.plot(d["step"], d[metric], marker="o" if len(d) < 20 else None, ms=3, label=label)
        ax.set_xlabel("step")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_yaw_bins(tables: Mapping[str, pd.DataFrame]) -> Figure:
    """Grouped bars per yaw bin (and the balanced mean), one bar per run, one panel per metric.

    Args:
        tables: panel title (e.g. ``"landmark NME (%)"``) -> :func:`yaw_bin_table` frame.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 3.8), squeeze=False)
    groups = [*YAW_BIN_LABELS, "mean"]
    for ax, (title, table) in zip(axes[0], tables.items()):
        runs = list(table.index)
        width = 0.8 / max(1, len(runs))
        x = np.arange(len(groups))
        for k, run in enumerate(runs):
            vals = table.loc[run, groups].to_numpy(dtype=float)
            ax.bar(x + (k - (len(runs) - 1) / 2) * width, np.nan_to_num(vals), width, label=str(run))
        ax.set_xticks(x, [f"yaw {g}" if g != "mean" else "mean" for g in groups])
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


@torch.no_grad()
def qualitative_grid(
    models: Mapping[str, FacePipeline], faces: EvalFaces, count: int = 4, display_size: int = 128
) -> tuple[np.ndarray, list[str]]:
    """The same faces across runs: ``input | overlay of run 1 | overlay of run 2 | ...``.

    Each overlay is the run's rendering composited on the input with its predicted landmarks (red) and the
    ground truth (green) drawn on top.

    Args:
        models: label -> network (with a renderer).
        faces: the test faces (the first ``count`` are shown).
        count: rows.
        display_size: side D of each panel in pixels (crops smaller than this are upsampled bilinearly after
            rendering, so the landmark dots stay readable); at least the crop size S.

    Returns:
        ((rows * D, (1 + runs) * D, 3) uint8 picture, column titles), D = max(display_size, S).
    """
    import torch.nn.functional as F

    from msma.viz import landmark_panel, overlay

    rows = min(count, faces.size)
    if rows < 1:
        raise ValueError("qualitative_grid: no faces")
    size = faces.image_size
    shown = max(display_size, size)
    scale = shown / size

    def up(x: Tensor) -> Tensor:
        return x if shown == size else F.interpolate(x, size=(shown, shown), mode="bilinear", align_corners=False)

    def points(p: Tensor) -> Tensor:
        # Pixel-index coordinates: pixel centres map as (p + 0.5) * scale - 0.5.
        return (p + 0.5) * scale - 0.5

    image = faces.image[:rows]
    columns: list[list[np.ndarray]] = [[landmark_panel(img, None, None) for img in up(image)]]
    for model in models.values():
        model = model.eval()
        device = next(model.parameters()).device
        out = model.reconstruct(image.to(device), render=True)
        assert out.render is not None
        comp = up(overlay(image.to(device), out.render.image[:, :3], out.render.mask).cpu())
        lms = points(out.face.landmarks_2d.cpu())
        columns.append([landmark_panel(comp[i], lms[i], points(faces.landmarks[i])) for i in range(rows)])
    picture = np.concatenate([np.concatenate(col, axis=0) for col in columns], axis=1)
    return picture, ["input", *models.keys()]


def plot_mesh(
    vertices: Tensor | np.ndarray,
    triangles: Tensor | np.ndarray,
    colors: Tensor | np.ndarray | None = None,
    max_triangles: int = 20_000,
    views: Sequence[tuple[float, float]] = ((0.0, -90.0), (0.0, -45.0)),
) -> Figure:
    """Draws a mesh with matplotlib 3D polygons (per-face colour = mean vertex colour), rotatable in Jupyter.

    Matplotlib orders polygons by depth (painter's algorithm, no z-buffer): back faces are culled, but occluded
    front-facing interior surfaces (ICT's mouth cavity) can still show through; :func:`render_views` renders
    with msma's z-buffered rasteriser instead.

    Args:
        vertices: (N, 3) positions in mm, model frame (x right, y up, z towards the viewer).
        triangles: (F, 3) vertex indices.
        colors: (N, 3) vertex colours in [0, 1] (default: grey, lit from the viewer). Triangles must be
            counter-clockwise seen from outside (back faces are culled).
        max_triangles: subsample the faces beyond this many (speed).
        views: (elevation, azimuth) pairs in degrees in matplotlib's z-up frame; one panel each
            (azimuth -90: frontal).
    """
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    v = np.asarray(vertices.detach().cpu() if isinstance(vertices, Tensor) else vertices, dtype=np.float64)
    f = np.asarray(triangles.detach().cpu() if isinstance(triangles, Tensor) else triangles, dtype=np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"plot_mesh: vertices must be (N, 3) and triangles (F, 3), got {v.shape} and {f.shape}")
    if len(f) > max_triangles:
        f = f[np.linspace(0, len(f) - 1, max_triangles).astype(np.int64)]
    # Matplotlib 3D is z-up: show the face's y-up model frame as (x, -z, y) (a proper rotation: winding kept).
    p = np.stack([v[:, 0], -v[:, 2], v[:, 1]], axis=1)
    tri = p[f]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True).clip(1e-12)
    if colors is not None:
        c = np.asarray(colors.detach().cpu() if isinstance(colors, Tensor) else colors, dtype=np.float64)
        face_rgb = np.clip(c[f].mean(axis=1), 0.0, 1.0)
    else:
        face_rgb = None
    fig = plt.figure(figsize=(4.5 * len(views), 4.5))
    lo, hi = p.min(axis=0), p.max(axis=0)
    centre, half = (lo + hi) / 2, (hi - lo).max() / 2
    for k, (elev, azim) in enumerate(views):
        e, a = math.radians(elev), math.radians(azim)
        to_viewer = np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
        facing = normals @ to_viewer
        # Back-face culling (counter-clockwise triangles seen from outside): matplotlib sorts polygons by
        # depth (painter's algorithm), so hidden back faces would otherwise show through.
        keep = facing > 0 if (facing > 0).any() else np.ones(len(f), dtype=bool)
        if face_rgb is None:
            rgb = np.repeat(np.clip(0.2 + 0.75 * facing[keep], 0.0, 1.0)[:, None], 3, axis=1)
        else:
            rgb = face_rgb[keep]
        ax = fig.add_subplot(1, len(views), k + 1, projection="3d")
        ax.add_collection3d(Poly3DCollection(tri[keep], facecolors=rgb, edgecolors="none"))
        for setter, c0 in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), centre):
            setter(c0 - half, c0 + half)
        ax.set_box_aspect((1, 1, 1))
        ax.view_init(elev=elev, azim=azim)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


@torch.no_grad()
def render_views(
    model: FacePipeline,
    params: FaceParams,
    yaws_deg: Sequence[float] = (0.0, 45.0, 90.0),
    image_size: int = 256,
    shading: str = "both",
) -> np.ndarray:
    """Renders a predicted face from several yaw angles with the network's own (z-buffered) renderer.

    The face is centred (translation zeroed), pitch and roll set to 0, the yaw replaced by each value.

    Args:
        model: the network (``Reconstructor.model``); its face model and renderer are used.
        params: coefficients of one face (batch of one), e.g. ``Reconstruction.params``.
        yaws_deg: yaw angles in degrees (positive: the face turns towards its left, the camera's right).
        image_size: side of each view in pixels.
        shading: ``"color"`` (albedo x the predicted SH light), ``"geometry"`` (grey, lit from the camera)
            or ``"both"`` (two rows).

    Returns:
        (rows * image_size, len(yaws) * image_size, 3) uint8 picture on a white background.
    """
    from dataclasses import replace

    from msma.viz import landmark_panel

    if shading not in ("color", "geometry", "both"):
        raise ValueError(f"render_views: shading must be 'color', 'geometry' or 'both', got {shading!r}")
    if params.batch_size != 1:
        raise ValueError(f"render_views: expected the coefficients of one face, got a batch of {params.batch_size}")
    device = next(model.parameters()).device
    params = params.to(device)
    n = len(yaws_deg)
    angles = torch.zeros(n, 3, device=device, dtype=params.angles.dtype)
    angles[:, 1] = torch.tensor([math.radians(y) for y in yaws_deg], device=device, dtype=angles.dtype)
    batch = replace(
        params,
        **{g: t.expand(n, -1) for g, t in params.items() if g not in ("angles", "trans")},
        angles=angles,
        trans=torch.zeros(n, 3, device=device, dtype=params.trans.dtype),
    )
    face = model.face_model(batch, image_size=image_size)
    tri = model.face_model.tri
    rows = []
    if shading in ("color", "both"):
        rows.append(model.renderer.render(face, tri))
    if shading in ("geometry", "both"):
        grey = (0.2 + 0.75 * face.normals[..., 2:3].clamp_min(0.0)).expand(-1, -1, 3)
        rows.append(model.renderer.render(replace(face, color=grey), tri))
    lines = []
    for out in rows:
        img = out.image[:, :3] * out.mask + (1.0 - out.mask)
        lines.append(np.concatenate([landmark_panel(img[i].cpu(), None, None) for i in range(n)], axis=1))
    return np.concatenate(lines, axis=0)


def save_figure(fig: Figure | np.ndarray, path: str | Path, dpi: int = 110) -> Path:
    """Saves a matplotlib figure or an (H, W, 3) uint8 picture as PNG (parent folders created)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(fig, np.ndarray):
        from msma.viz import save_png

        return save_png(fig, out)
    fig.savefig(out, dpi=dpi, bbox_inches="tight")
    return out
