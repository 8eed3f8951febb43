"""Training/evaluation pictures: one row per face, three panels ``input | rendered overlay | landmarks``.

All functions take plain tensors in msma's conventions: images float RGB in [0, 1], (B, 3, H, W); landmarks
(B, 68, 2) in pixel coordinates of that image (x right, y down, pixel-index units); coverage masks
(B, 1, H, W) in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

#: Colour of the target (ground-truth / pseudo-label) landmarks in the grid (green).
TARGET_COLOR = (40, 220, 60)
#: Colour of the predicted landmarks in the grid (red).
PRED_COLOR = (235, 40, 40)


def _to_uint8(image: Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    arr = image.detach().float().clamp(0.0, 1.0).permute(1, 2, 0).cpu().numpy()
    return (arr * 255.0 + 0.5).astype(np.uint8)


def overlay(image: Tensor, rendered: Tensor, mask: Tensor, alpha: float = 1.0) -> Tensor:
    """Composites a rendering over the photo.

    Args:
        image: (B, 3, H, W) photo in [0, 1].
        rendered: (B, 3, H, W) rendered colour in [0, 1] (zero where empty).
        mask: (B, 1, H, W) render coverage in [0, 1].
        alpha: opacity of the rendering where it covers the image.

    Returns:
        (B, 3, H, W) composite in [0, 1].
    """
    if image.shape != rendered.shape or mask.shape[-2:] != image.shape[-2:]:
        raise ValueError(
            f"overlay: image {tuple(image.shape)}, rendered {tuple(rendered.shape)} and mask "
            f"{tuple(mask.shape)} must share (B, ., H, W)"
        )
    m = (mask * alpha).clamp(0.0, 1.0)
    return (rendered * m + image * (1.0 - m)).clamp(0.0, 1.0)


def _draw_points(draw: ImageDraw.ImageDraw, points: np.ndarray, color: tuple[int, int, int], radius: float) -> None:
    for x, y in points:
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=color)


def landmark_panel(
    image: Tensor, pred: Tensor | None, target: Tensor | None, radius: float | None = None
) -> np.ndarray:
    """Draws predicted (red) and target (green) landmarks on one image.

    Args:
        image: (3, H, W) in [0, 1].
        pred: (68, 2) predicted landmarks in pixel coordinates, or None.
        target: (68, 2) target landmarks in pixel coordinates (NaN rows skipped), or None.
        radius: dot radius in pixels (default: H / 100, at least 1).

    Returns:
        (H, W, 3) uint8 picture.
    """
    pil = Image.fromarray(_to_uint8(image))
    draw = ImageDraw.Draw(pil)
    r = max(1.0, image.shape[-2] / 100.0) if radius is None else radius
    if target is not None:
        _draw_points(draw, target.detach().float().cpu().numpy(), TARGET_COLOR, r)
    if pred is not None:
        _draw_points(draw, pred.detach().float().cpu().numpy(), PRED_COLOR, r)
    return np.asarray(pil)


def make_grid(
    image: Tensor,
    rendered: Tensor,
    mask: Tensor,
    pred_landmarks: Tensor,
    target_landmarks: Tensor | None = None,
    max_rows: int = 8,
) -> np.ndarray:
    """Builds the ``input | rendered overlay | landmarks (pred red, target green)`` grid.

    Args:
        image: (B, 3, H, W) input crops in [0, 1].
        rendered: (B, 3, H, W) rendered faces in [0, 1].
        mask: (B, 1, H, W) render coverage.
        pred_landmarks: (B, 68, 2) predicted landmarks, pixel coordinates of the crop.
        target_landmarks: (B, 68, 2) target landmarks (NaN where unknown) or None.
        max_rows: at most this many faces (rows).

    Returns:
        (rows * H, 3 * W, 3) uint8 RGB picture.
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"make_grid: image must be (B, 3, H, W), got {tuple(image.shape)}")
    if pred_landmarks.shape[0] != image.shape[0]:
        raise ValueError("make_grid: pred_landmarks and image disagree on the batch size")
    rows = min(int(image.shape[0]), max_rows)
    if rows == 0:
        raise ValueError("make_grid: empty batch")
    comp = overlay(image[:rows], rendered[:rows], mask[:rows])
    lines = []
    for i in range(rows):
        tgt = None if target_landmarks is None else target_landmarks[i]
        panels = [_to_uint8(image[i]), _to_uint8(comp[i]), landmark_panel(image[i], pred_landmarks[i], tgt)]
        lines.append(np.concatenate(panels, axis=1))
    return np.concatenate(lines, axis=0)


def save_png(picture: np.ndarray, path: str | Path) -> Path:
    """Writes an (H, W, 3) uint8 picture as PNG (parent folders created); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if picture.dtype != np.uint8 or picture.ndim != 3 or picture.shape[2] != 3:
        raise ValueError(f"save_png: expected (H, W, 3) uint8, got {picture.shape} {picture.dtype}")
    from msma.utils.files import atomic_write

    return atomic_write(out, lambda tmp: Image.fromarray(picture).save(tmp, format="PNG"))


@torch.no_grad()
def grid_tensor(picture: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [0, 1] (for loggers that want tensors)."""
    return torch.from_numpy(picture).permute(2, 0, 1).float() / 255.0
