"""Occluders in front of the face: hands, glasses, hats, mask-like shapes and generic objects.

Each occluder is a layer ``(rgb (3, S, S), alpha (1, S, S))`` placed from the projected landmarks and composited
over the render; the sample's skin mask is multiplied by ``1 - alpha`` (occluded skin is not skin the losses may
compare), the landmarks are unchanged (like AFLW2000-3D's, hidden points keep their positions).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from torch import Tensor

from msma.data.landmark_index import CHIN, LEFT_EYE, NASION, NOSE_TIP, RIGHT_EYE

OCCLUDER_KINDS = ("hand", "glasses", "hat", "mask", "object")
#: Probability of each occluder per sample (independent draws).
OCCLUDER_P = {"hand": 0.12, "glasses": 0.2, "hat": 0.08, "mask": 0.06, "object": 0.1}


def _frame(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """``(up, side, face height, face width)`` of the landmarks (pixels): up from chin to nasion."""
    up = lm[NASION] - lm[CHIN]
    h = max(float(np.linalg.norm(up)), 4.0)
    up = up / h
    side = np.array([-up[1], up[0]])
    w = max(float(np.linalg.norm(lm[16] - lm[0])), 0.6 * h)
    return up, side, h, w


def _poly(mask: np.ndarray, pts: np.ndarray, value: float = 1.0) -> None:
    cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], value, lineType=cv2.LINE_AA, shift=4)


def _ellipse(
    mask: np.ndarray, c: np.ndarray, axes: tuple[float, float], angle: float, value: float = 1.0, thick: int = -1
) -> None:
    cv2.ellipse(
        mask,
        (int(round(c[0] * 16)), int(round(c[1] * 16))),
        (max(1, int(axes[0] * 16)), max(1, int(axes[1] * 16))),
        angle,
        0,
        360,
        value,
        thick if thick < 0 else max(1, thick),
        cv2.LINE_AA,
        4,
    )


def _shaded(colour: np.ndarray, alpha: np.ndarray, r: float, up: np.ndarray) -> np.ndarray:
    """A colour with a linear light gradient along ``up`` (``r`` in [0, 1] sets its slope)."""
    s = alpha.shape[0]
    ys, xs = np.mgrid[0:s, 0:s].astype(np.float32) / s
    g = 0.75 + 0.5 * (xs * up[0] * (r - 0.5) * 2 - ys * up[1] * 0.6)
    return np.clip(colour[:, None, None] * g[None], 0.0, 1.0)


def hand(lm: np.ndarray, size: int, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A hand (palm + 4 fingers + thumb) over the lower face, a cheek or the chin, skin-coloured."""
    up, side, h, w = _frame(lm)
    alpha = np.zeros((size, size), np.float32)
    anchor = [lm[CHIN], lm[3], lm[13], lm[NOSE_TIP], lm[48]][int(r[0] * 5) % 5]
    ang = (r[1] - 0.5) * 2.4 + math.atan2(-up[1], -up[0])  # fingers point roughly up
    d = np.array([math.cos(ang), math.sin(ang)])
    n = np.array([-d[1], d[0]])
    scale = h * (0.8 + 0.5 * r[2])
    palm = anchor - d * scale * (0.45 + 0.3 * r[3])
    _ellipse(alpha, palm, (0.5 * scale * 0.55, 0.5 * scale * 0.45), math.degrees(ang) + 90)
    for k in range(4):
        base = palm + n * scale * (k - 1.5) * 0.13 + d * scale * 0.15
        tip = base + d * scale * (0.42 + 0.08 * (1 - abs(k - 1.5) / 1.5))
        cv2.line(
            alpha,
            tuple(np.round(base * 16).astype(int)),
            tuple(np.round(tip * 16).astype(int)),
            1.0,
            max(1, int(scale * 0.1)),
            cv2.LINE_AA,
            4,
        )
    thumb0 = palm + n * scale * 0.3
    cv2.line(
        alpha,
        tuple(np.round(thumb0 * 16).astype(int)),
        tuple(np.round((thumb0 + (n + d) * scale * 0.25) * 16).astype(int)),
        1.0,
        max(1, int(scale * 0.11)),
        cv2.LINE_AA,
        4,
    )
    tone = np.array([0.85, 0.62, 0.5]) * (0.35 + 0.75 * r[4])
    return _shaded(tone, alpha, r[5], up), alpha


def glasses(lm: np.ndarray, size: int, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Glasses: two rims around the eyes, a bridge, temples towards the ears, tinted lenses (sunglasses)."""
    up, side, h, w = _frame(lm)
    alpha = np.zeros((size, size), np.float32)
    lens = np.zeros((size, size), np.float32)
    thick = max(1, int(round(h * (0.015 + 0.03 * r[0]))))
    ang = math.degrees(math.atan2(side[1], side[0]))
    centres = []
    for eye in (RIGHT_EYE, LEFT_EYE):
        c = lm[list(eye)].mean(0) - up * h * 0.02
        ew = np.linalg.norm(lm[eye[3]] - lm[eye[0]])
        ax = (ew * (0.85 + 0.3 * r[1]), ew * (0.55 + 0.25 * r[2]))
        _ellipse(lens, c, ax, ang)
        _ellipse(alpha, c, ax, ang, thick=thick)
        centres.append((c, ax[0]))
    (c0, a0), (c1, a1) = centres
    cv2.line(
        alpha,
        tuple(np.round((c0 + side * a0) * 16).astype(int)),
        tuple(np.round((c1 - side * a1) * 16).astype(int)),
        1.0,
        thick,
        cv2.LINE_AA,
        4,
    )
    for c, a, sgn, j in ((c0, a0, -1, 0), (c1, a1, 1, 16)):
        start = c + sgn * side * a
        end = lm[j] * 0.7 + start * 0.3 + up * h * 0.1
        cv2.line(
            alpha,
            tuple(np.round(start * 16).astype(int)),
            tuple(np.round(end * 16).astype(int)),
            1.0,
            thick,
            cv2.LINE_AA,
            4,
        )
    frame_col = np.array([0.05, 0.05, 0.05]) + r[3] * np.array([0.5, 0.4, 0.3])
    sun = r[4] < 0.25
    tint_a = (0.75 + 0.2 * r[5]) if sun else 0.08 * r[5]
    tint = np.array([0.05, 0.06, 0.07]) if sun else np.array([0.9, 0.95, 1.0])
    a = np.maximum(alpha, lens * tint_a * (1 - alpha))
    rgb = (
        frame_col[:, None, None] * alpha[None] + tint[:, None, None] * (lens * tint_a * (1 - alpha))[None]
    ) / np.maximum(a, 1e-4)[None]
    # a lens reflection
    hl = np.zeros((size, size), np.float32)
    _ellipse(hl, c0 + (side - up) * a0 * 0.3, (a0 * 0.25, a0 * 0.1), ang + 30)
    rgb = np.clip(rgb + hl[None] * 0.3 * r[6] * lens[None], 0, 1)
    return rgb, np.clip(a, 0, 1)


def hat(lm: np.ndarray, size: int, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A cap or beanie covering the top of the head down to the upper forehead."""
    up, side, h, w = _frame(lm)
    alpha = np.zeros((size, size), np.float32)
    brow = lm[17:27].mean(0)
    bottom = brow + up * h * (0.15 + 0.35 * r[0])
    crown = bottom + up * h * 0.55
    ang = math.degrees(math.atan2(side[1], side[0]))
    _ellipse(alpha, crown, (w * (0.62 + 0.15 * r[1]), h * 0.6), ang)
    half = w * (0.62 + 0.15 * r[1])
    band = np.array(
        [
            bottom - side * half,
            bottom + side * half,
            bottom + side * half + up * h * 0.6,
            bottom - side * half + up * h * 0.6,
        ]
    )
    _poly(alpha, band)
    if r[2] < 0.5:  # brim
        _ellipse(alpha, bottom - up * h * 0.02, (half * 0.95, h * 0.12), ang)
    colour = np.random.default_rng(int(r[3] * 1e6)).random(3) * (0.3 + 0.7 * r[4])
    return _shaded(colour, alpha, r[5], up), alpha


def mask(lm: np.ndarray, size: int, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A mask-like shape from the nose bridge to below the chin, between the jaw sides."""
    up, side, h, w = _frame(lm)
    alpha = np.zeros((size, size), np.float32)
    top = lm[28] * (1 - r[0] * 0.5) + lm[NOSE_TIP] * (r[0] * 0.5)
    jaw = lm[list(range(2, 15))]
    pts = np.concatenate(
        [[lm[1] * 0.6 + top * 0.4], jaw + up * h * 0.0 - (jaw - lm[NOSE_TIP]) * 0.05, [lm[15] * 0.6 + top * 0.4], [top]]
    )
    _poly(alpha, pts)
    colour = [np.array([0.55, 0.75, 0.85]), np.array([0.95, 0.95, 0.95]), np.array([0.1, 0.1, 0.12])][int(r[1] * 3) % 3]
    return _shaded(colour * (0.8 + 0.2 * r[2]), alpha, r[3], up), alpha


def generic_object(lm: np.ndarray, size: int, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A rectangle or ellipse (phone, microphone, cup) entering from an image border over part of the face."""
    up, side, h, w = _frame(lm)
    alpha = np.zeros((size, size), np.float32)
    c = lm[int(r[0] * 68) % 68] + (r[1:3] - 0.5) * h * 0.6
    if r[3] < 0.5:
        ang = r[4] * math.pi
        d = np.array([math.cos(ang), math.sin(ang)])
        n = np.array([-d[1], d[0]])
        a, b = h * (0.2 + 0.5 * r[5]), h * (0.1 + 0.25 * r[6])
        _poly(alpha, np.array([c - d * a - n * b, c + d * a - n * b, c + d * a + n * b, c - d * a + n * b]))
    else:
        _ellipse(alpha, c, (h * (0.1 + 0.3 * r[5]), h * (0.1 + 0.3 * r[6])), r[4] * 180)
    colour = np.random.default_rng(int(r[7] * 1e6)).random(3)
    return _shaded(colour, alpha, r[8], up), alpha


_DRAW = {"hand": hand, "glasses": glasses, "hat": hat, "mask": mask, "object": generic_object}


def occluder_layers(
    landmarks: Tensor, size: int, r: Tensor, probability: float = 1.0, kinds: tuple[str, ...] = OCCLUDER_KINDS
) -> list[tuple[str, Tensor, Tensor]]:
    """The occluders of one sample, back to front.

    Args:
        landmarks: (68, 2) projected landmarks (pixels).
        size: image size S.
        r: (len(OCCLUDER_KINDS), 11) uniform draws (column 0 decides presence).
        probability: multiplier of :data:`OCCLUDER_P` (0 disables occluders).
        kinds: which kinds may appear.

    Returns:
        ``[(kind, rgb (3, S, S), alpha (1, S, S))]`` in compositing order.
    """
    lm = landmarks.double().numpy()
    if not np.isfinite(lm).all():
        return []
    out = []
    rn = r.double().numpy()
    for k, kind in enumerate(OCCLUDER_KINDS):
        if kind not in kinds or rn[k, 0] >= OCCLUDER_P[kind] * probability:
            continue
        rgb, alpha = _DRAW[kind](lm, size, rn[k, 1:])
        out.append(
            (
                kind,
                torch.from_numpy(np.ascontiguousarray(rgb)).float(),
                torch.from_numpy(alpha).float()[None].clamp(0, 1),
            )
        )
    return out
