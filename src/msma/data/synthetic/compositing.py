"""What goes behind and around a rendered face: head context (skull, hair, neck), the mouth cavity, sensor noise
helpers, and the landmark visibility test.

Landmark indices come from :mod:`msma.data.landmark_index` (iBUG 68-point order).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from msma.data.landmark_index import CHIN, INNER_LIP, JAW_LEFT_END, JAW_RIGHT_END, NASION, NOSE_TIP

#: Hair colours (RGB in [0, 1]): black, dark brown, brown, light brown, blond, auburn, grey.
_HAIR_RGB = torch.tensor(
    [
        [0.05, 0.04, 0.04],
        [0.16, 0.10, 0.07],
        [0.30, 0.20, 0.13],
        [0.45, 0.33, 0.22],
        [0.70, 0.58, 0.38],
        [0.45, 0.20, 0.10],
        [0.55, 0.55, 0.55],
    ]
)


def head_context(background: Tensor, landmarks: Tensor, skin_rgb: Tensor, r: Tensor, texture: Tensor) -> Tensor:
    """Paints a rough skull (hair or bald) and a neck onto the background, placed from the face's landmarks.

    The rendered mesh is the face only (forehead to chin); real aligned crops show hair, the back of the head and
    the neck around it. This layer goes *behind* the render (the composite only shows it where the face does not
    cover), so it never changes a label.

    Args:
        background: (3, S, S) background.
        landmarks: (68, 2) projected landmarks (pixels) of this face.
        skin_rgb: (3,) mean rendered skin colour (neck and bald skull colour).
        r: (12,) uniform draws of this sample.
        texture: (1, s, s) value noise in [0, 1] (hair texture), any s.

    Returns:
        (3, S, S) background with the head context, or ``background`` for the 25 % of samples without it.
    """
    if float(r[0]) < 0.25 or not bool(torch.isfinite(landmarks).all()):
        return background
    size = background.shape[-1]
    chin, nasion, nose = landmarks[CHIN], landmarks[NASION], landmarks[NOSE_TIP]
    jaw_mid = 0.5 * (landmarks[JAW_RIGHT_END] + landmarks[JAW_LEFT_END])
    up = nasion - chin
    face_h = float(up.norm().clamp_min(1.0))
    up = up / face_h
    side = torch.stack([-up[1], up[0]])  # perpendicular to ``up`` (image x for an upright face)
    width = max(float((landmarks[JAW_LEFT_END] - landmarks[JAW_RIGHT_END]).norm()), 0.75 * face_h)
    # The skull sits behind the face: centred a little above the nasion and shifted sideways away from where the
    # nose points (yaw turns the back of the head to the other side).
    turn = float((nose - jaw_mid) @ side)
    centre = nasion + up * (0.1 * face_h) - side * (1.2 * turn)
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    dx, dy = xs - float(centre[0]), ys - float(centre[1])
    a = (dx * float(side[0]) + dy * float(side[1])) / (0.6 * width * (0.95 + 0.3 * float(r[1])))
    b = (dx * float(up[0]) + dy * float(up[1])) / (1.0 * face_h * (0.95 + 0.25 * float(r[2])))
    skull = torch.sigmoid((1.0 - (a * a + b * b)) * 12.0)
    tex = F.interpolate(texture[None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    if float(r[3]) < 0.1:  # bald
        head_rgb = skin_rgb * (0.85 + 0.2 * float(r[4]))
        head = head_rgb[:, None, None] * (0.9 + 0.2 * tex)
    else:
        hair = _HAIR_RGB[int(float(r[4]) * len(_HAIR_RGB)) % len(_HAIR_RGB)] * (0.7 + 0.6 * float(r[5]))
        head = hair[:, None, None] * (0.6 + 0.8 * tex)
        # long hair: extend the hair region down the sides of the face
        if float(r[6]) < 0.4:
            below = (dx * float(up[0]) + dy * float(up[1])) < 0
            drop = torch.sigmoid((1.0 - a.abs()) * 10.0) * torch.sigmoid((1.4 * face_h + (b * 1.05 * face_h)) / 6.0)
            skull = torch.where(below, torch.maximum(skull, drop), skull)
    # Neck: a band from under the chin down to the image border, narrower than the face, in shadow.
    ndx, ndy = xs - float(chin[0]), ys - float(chin[1])
    along = -(ndx * float(up[0]) + ndy * float(up[1]))  # distance below the chin
    across = (ndx * float(side[0]) + ndy * float(side[1])) / (0.33 * width * (0.85 + 0.3 * float(r[7])))
    neck = torch.sigmoid((1.0 - across.abs()) * 8.0) * torch.sigmoid((along + 0.3 * face_h) / 3.0)
    neck_rgb = skin_rgb * (0.55 + 0.3 * float(r[8]))
    out = background * (1.0 - neck) + neck_rgb[:, None, None] * neck
    out = out * (1.0 - skull) + head.clamp(0.0, 1.0) * skull
    return out.clamp(0.0, 1.0)


def mouth_cavity(landmarks: Tensor, size: int) -> Tensor:
    """Soft mask (S, S) of the inner-lip polygon (what shows through an open mouth, which is not rendered)."""
    pts = landmarks[list(INNER_LIP)].numpy().astype(np.float64)
    mask = np.zeros((size, size), dtype=np.uint8)
    if not np.isfinite(pts).all():
        return torch.zeros(size, size)
    shift = 4
    poly = np.round(pts * (1 << shift)).astype(np.int32)
    cv2.fillPoly(mask, [poly], 255, lineType=cv2.LINE_AA, shift=shift)
    return torch.from_numpy(mask.astype(np.float32) / 255.0)


def to_uint8(x: Tensor) -> Tensor:
    return (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def visible_landmarks(
    landmarks_2d: Tensor, landmarks_depth: Tensor, depth_map: Tensor, coverage: Tensor, tol_mm: float = 6.0
) -> Tensor:
    """Which projected landmarks are visible (not occluded by the face itself, inside the image and mask).

    Args:
        landmarks_2d: (B, 68, 2) pixel coordinates (x right, y down).
        landmarks_depth: (B, 68) distance of the landmark vertices from the camera along the view axis, mm.
        depth_map: (B, 1, H, W) rendered depth in mm (0 where empty).
        coverage: (B, 1, H, W) rendered coverage in [0, 1].
        tol_mm: a landmark is visible when it is at most this far behind the rendered surface at its pixel.

    Returns:
        (B, 68) bool.
    """
    b, _, h, w = depth_map.shape
    j = landmarks_2d[..., 0].round().long()
    i = landmarks_2d[..., 1].round().long()
    inside = (j >= 0) & (j < w) & (i >= 0) & (i < h)
    jc, ic = j.clamp(0, w - 1), i.clamp(0, h - 1)
    bi = torch.arange(b)[:, None].expand_as(jc)
    d = depth_map[bi, 0, ic, jc]
    cov = coverage[bi, 0, ic, jc]
    return inside & (cov > 0.5) & (landmarks_depth <= d + tol_mm)
