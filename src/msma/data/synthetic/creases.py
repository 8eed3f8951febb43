"""Static skin creases: the forehead lines and nasolabial folds adult faces show at rest.

The face model's blendshapes are scans of expressions: raising the inner brows creases the forehead and sneering
deepens the nasolabial folds, while the neutral face has neither. Real adults show both at rest (more with age), so
a network trained on the synthetic faces alone can read a photographed person's static creases as ``browInnerUp``
and ``noseSneer``; the `embedded` networks read both on every labelled photo here (docs/synthetic.md). This layer
draws such creases onto a fraction of the synthetic faces whatever their expression, so that a crease stops being
evidence of one.

Drawn in the crop from the face's projected 68 landmarks (pixels), as a darkening of the albedo on the face
model's skin (:func:`crease_layer` returns the darkening; the dataset multiplies the albedo by ``1 - layer``):

* nasolabial folds (70 % of the creased faces): a curve on each side from beside the nose wing (points 31 / 35)
  to beside and below the mouth corner (48 / 54), bulging outward; the far side of a turned face (its jaw point 3
  or 13 nearer the nose tip than half the near side's) gets none;
* forehead lines (60 %): one to three horizontal arcs 12-45 % of the face height above the brows' mean,
  each 45-70 % of the face width long.

A fold darkens by 12-48 % at its centre line, a forehead line by 8-30 %, each fading over a width of 0.8-2.9 % of
the face height (at least 0.6 px). All draws come from the 16 uniforms passed in, so a sample's creases are reproducible.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor

#: Landmarks (iBUG 68, 0-based): nose wings, mouth corners, nose tip, the jaw points beside the folds, brows.
NOSE_WINGS = (31, 35)
MOUTH_CORNERS = (48, 54)
NOSE_TIP = 30
JAW_BESIDE_FOLDS = (3, 13)
#: Number of uniforms :func:`crease_layer` reads.
CREASE_DRAWS = 16
#: The most a crease darkens the albedo.
MAX_DARKENING = 0.45


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int = 24) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    return np.asarray((1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2)


def _draw(layer: np.ndarray, curve: np.ndarray, strength: float, width: float) -> None:
    """Adds one crease (a polyline in pixels) of peak darkening ``strength`` fading over ``width`` pixels."""
    canvas = np.zeros_like(layer)
    pts = np.round(curve * 16).astype(np.int32)
    cv2.polylines(canvas, [pts], False, 1.0, thickness=1, lineType=cv2.LINE_AA, shift=4)
    sigma = max(width, 0.6) / 2.0
    canvas = cv2.GaussianBlur(canvas, (0, 0), sigma)
    peak = float(canvas.max())
    if peak > 0:
        np.maximum(layer, canvas * (strength / peak), out=layer)


def crease_layer(lm: np.ndarray, size: int, r: np.ndarray) -> np.ndarray:
    """The albedo darkening of one face's static creases.

    Args:
        lm: (68, 2) the face's projected landmarks in crop pixels (x right, y down).
        size: crop size S in pixels.
        r: (:data:`CREASE_DRAWS`,) uniforms in [0, 1).

    Returns:
        (S, S) float32 darkening in [0, :data:`MAX_DARKENING`]: 0 where there is no crease.
    """
    lm = np.asarray(lm, dtype=np.float64)
    layer = np.zeros((size, size), np.float32)
    up = lm[27] - lm[8]  # chin -> nasion
    h = max(float(np.linalg.norm(up)), 4.0)
    up = up / h
    side = np.array([-up[1], up[0]])
    w = max(float(np.linalg.norm(lm[16] - lm[0])), 0.6 * h)
    width = max(0.6, h * (0.008 + 0.016 * float(r[1])))
    if r[0] < 0.7:  # nasolabial folds
        strength = 0.12 + 0.28 * float(r[2])
        reach = [abs(float(np.dot(lm[j] - lm[NOSE_TIP], side))) for j in JAW_BESIDE_FOLDS]
        for k in range(2):
            if reach[k] < 0.5 * max(reach):
                continue  # the far side of a turned face
            wing, corner = lm[NOSE_WINGS[k]], lm[MOUTH_CORNERS[k]]
            out = side * np.sign(np.dot(corner - lm[NOSE_TIP], side) or 1.0)
            start = wing + out * w * (0.03 + 0.03 * float(r[3])) + up * h * 0.01
            end = corner + out * w * (0.04 + 0.05 * float(r[4])) - up * h * (0.04 + 0.08 * float(r[5]))
            bulge = (start + end) / 2 + out * w * (0.02 + 0.04 * float(r[6]))
            _draw(layer, _bezier(start, bulge, end), strength * (0.8 + 0.4 * float(r[7 + k])), width)
    if r[9] < 0.6:  # forehead lines
        brow = lm[17:27].mean(0)
        n = 1 + int(3 * float(r[10]) * 0.999)
        for k in range(n):
            centre = brow + up * h * (0.12 + 0.1 * k + 0.05 * float(r[11]))
            half = w * (0.22 + 0.13 * float(r[12]))
            sag = up * h * (0.04 * (float(r[13]) - 0.5))  # arcs bend up or down at the centre
            curve = _bezier(centre - side * half, centre + 2 * sag, centre + side * half)
            _draw(layer, curve, (0.08 + 0.22 * float(r[14])) * (1.0 - 0.2 * k), width * (0.8 + 0.4 * float(r[15])))
    return np.clip(layer, 0.0, MAX_DARKENING)


def creased_albedo(albedo: Tensor, skin: Tensor, landmarks: Tensor, fraction: float, seed: int) -> Tensor:
    """One sample's albedo with its static creases, for a fraction ``fraction`` of the samples.

    Args:
        albedo: (3, S, S) the rendered albedo.
        skin: (1, S, S) the face model's skin weight (the creases darken the skin only).
        landmarks: (68, 2) projected landmarks, crop pixels.
        fraction: share of samples that get creases (``SamplingSettings.skin_creases``); 0 returns ``albedo``.
        seed: the sample's seed (:func:`msma.data.synthetic.sampling.sample_seed`); the creases draw from a generator
            of their own, so every other draw of the sample is the one it had without them.

    Returns:
        (3, S, S) albedo.
    """
    if fraction <= 0:
        return albedo
    gen = torch.Generator().manual_seed(seed ^ 0xC4EA5E)
    u = torch.rand(1 + CREASE_DRAWS, generator=gen, dtype=torch.float64).numpy()
    if u[0] >= fraction:
        return albedo
    layer = torch.from_numpy(crease_layer(landmarks.numpy(), albedo.shape[-1], u[1:])).to(albedo)
    return albedo * (1.0 - layer[None] * skin.to(albedo))
