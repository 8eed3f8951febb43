"""Structured background clutter: shapes with edges and layout (frames, shelves, windows, lines, blurred
people, foliage, text-like rows) drawn over a procedural background and defocused like a photo background."""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from torch import Tensor

from msma.data.synthetic.backgrounds import _gaussian_blur

CLUTTER_KINDS = ("rectangle", "line", "person", "foliage", "text", "window")


def _colour(rng: np.random.Generator) -> np.ndarray:
    c = rng.random(3)
    return c.mean() + (c - c.mean()) * rng.random()


def clutter(background: Tensor, gen: torch.Generator, max_items: int = 12) -> Tensor:
    """Draws 2..``max_items`` structured items over ``background`` and defocuses the result.

    Args:
        background: (3, S, S) in [0, 1].
        gen: the sample's generator (draws one 63-bit seed and one uniform).
        max_items: most items.

    Returns:
        (3, S, S) background with clutter, in [0, 1].
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    blur = float(torch.rand(1, generator=gen))
    rng = np.random.default_rng(seed)
    size = background.shape[-1]
    img = np.ascontiguousarray(background.permute(1, 2, 0).numpy().astype(np.float32))
    n = int(rng.integers(2, max_items + 1))
    s = float(size)
    for _ in range(n):
        kind = CLUTTER_KINDS[int(rng.integers(len(CLUTTER_KINDS)))]
        col = tuple(float(x) for x in _colour(rng))
        if kind == "rectangle":  # furniture, frames, doors (slightly skewed by perspective)
            c = rng.random(2) * s
            a, b = rng.uniform(0.05, 0.5, 2) * s
            sk = rng.normal(0, 0.1, 2) * s
            pts = np.array(
                [[c[0] - a, c[1] - b], [c[0] + a, c[1] - b + sk[0]], [c[0] + a, c[1] + b + sk[1]], [c[0] - a, c[1] + b]]
            )
            cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], col, cv2.LINE_AA, 4)
            if rng.random() < 0.5:
                cv2.polylines(
                    img,
                    [np.round(pts * 16).astype(np.int32)],
                    True,
                    tuple(0.6 * x for x in col),
                    max(1, int(s / 90)),
                    cv2.LINE_AA,
                    4,
                )
        elif kind == "line":  # edges of walls, shelves, horizon
            p0, ang = rng.random(2) * s, rng.uniform(0, math.pi)
            d = np.array([math.cos(ang), math.sin(ang)]) * 2 * s
            cv2.line(
                img,
                tuple(np.round((p0 - d) * 16).astype(int)),
                tuple(np.round((p0 + d) * 16).astype(int)),
                col,
                max(1, int(rng.uniform(1, s / 30))),
                cv2.LINE_AA,
                4,
            )
        elif kind == "person":  # a blurred head and shoulders of someone behind
            c = rng.random(2) * s
            r = rng.uniform(0.06, 0.2) * s
            cv2.ellipse(
                img,
                (int(c[0] * 16), int(c[1] * 16)),
                (int(r * 0.8 * 16), int(r * 16)),
                0,
                0,
                360,
                col,
                -1,
                cv2.LINE_AA,
                4,
            )
            body = np.array(
                [
                    [c[0] - 2.2 * r, c[1] + 3 * r],
                    [c[0] - 1.1 * r, c[1] + 1.1 * r],
                    [c[0] + 1.1 * r, c[1] + 1.1 * r],
                    [c[0] + 2.2 * r, c[1] + 3 * r],
                ]
            )
            cv2.fillPoly(
                img, [np.round(body * 16).astype(np.int32)], tuple(float(x) for x in _colour(rng)), cv2.LINE_AA, 4
            )
        elif kind == "foliage":  # many small blobs of similar colour
            c = rng.random(2) * s
            base = np.array(col)
            for _k in range(int(rng.integers(10, 40))):
                p = c + rng.normal(0, 0.12 * s, 2)
                rr = rng.uniform(0.01, 0.04) * s
                cc = tuple(float(x) for x in np.clip(base * rng.uniform(0.6, 1.3), 0, 1))
                cv2.circle(img, (int(p[0] * 16), int(p[1] * 16)), max(1, int(rr * 16)), cc, -1, cv2.LINE_AA, 4)
        elif kind == "text":  # rows of short dark strokes (signs, posters, book spines)
            x0, y0 = rng.random(2) * s
            hgt = rng.uniform(0.01, 0.04) * s
            for row in range(int(rng.integers(1, 5))):
                x = x0
                for _k in range(int(rng.integers(3, 12))):
                    wd = rng.uniform(0.5, 3) * hgt
                    y = y0 + row * 1.8 * hgt
                    cv2.rectangle(
                        img,
                        (int(x * 16), int(y * 16)),
                        (int((x + wd) * 16), int((y + hgt) * 16)),
                        col,
                        -1,
                        cv2.LINE_AA,
                        4,
                    )
                    x += wd + hgt * 0.6
        else:  # window: a bright pane with bars
            c = rng.random(2) * s
            a, b = rng.uniform(0.1, 0.35, 2) * s
            bright = tuple(float(x) for x in np.clip(0.75 + 0.25 * rng.random(3), 0, 1))
            cv2.rectangle(
                img,
                (int((c[0] - a) * 16), int((c[1] - b) * 16)),
                (int((c[0] + a) * 16), int((c[1] + b) * 16)),
                bright,
                -1,
                cv2.LINE_AA,
                4,
            )
            t = max(1, int(s / 60))
            cv2.line(
                img,
                (int(c[0] * 16), int((c[1] - b) * 16)),
                (int(c[0] * 16), int((c[1] + b) * 16)),
                col,
                t,
                cv2.LINE_AA,
                4,
            )
            cv2.line(
                img,
                (int((c[0] - a) * 16), int(c[1] * 16)),
                (int((c[0] + a) * 16), int(c[1] * 16)),
                col,
                t,
                cv2.LINE_AA,
                4,
            )
    out = torch.from_numpy(np.clip(img, 0, 1)).permute(2, 0, 1).contiguous()
    # Depth of field: the background is out of focus by a random amount.
    return _gaussian_blur(out, blur * blur * size / 60.0).clamp(0.0, 1.0)
