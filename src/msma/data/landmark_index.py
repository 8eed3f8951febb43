"""Semantics of the 68-point iBUG / Multi-PIE landmark scheme: named groups, the left/right mirror permutation
used by horizontal flips, and Deep3DFaceRecon's 5-point selection.

Indices are 0-based. "Left"/"right" in the names below are the **subject's** sides, as in the iBUG annotation
guide: points 36-41 are the subject's right eye, which appears on the viewer's left in a frontal photo
(small x in pixel coordinates).

Sources: the iBUG 300-W annotation scheme (Sagonas et al., "300 Faces in-the-Wild Challenge", 2013; the 68-point
figure) for the groups and their ordering; Deep3DFaceRecon_pytorch ``util/load_mats.py`` / ``util/preprocess.py``
(``extract_5p``: 1-based indices 31, 37, 40, 43, 46, 49, 55) for the 5 points.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

#: Number of points in the scheme.
NUM_LANDMARKS = 68

#: Fine-grained named groups (subject's left/right), as ``range`` objects of 0-based indices.
JAW = range(0, 17)
RIGHT_BROW = range(17, 22)
LEFT_BROW = range(22, 27)
NOSE_BRIDGE = range(27, 31)
NOSE_LOWER = range(31, 36)
RIGHT_EYE = range(36, 42)
LEFT_EYE = range(42, 48)
OUTER_LIP = range(48, 60)
INNER_LIP = range(60, 68)

#: Coarse groups (what plots and per-region errors use).
BROWS = range(17, 27)
NOSE = range(27, 36)
EYES = range(36, 48)
MOUTH = range(48, 68)

#: Every named group, fine and coarse, by name.
GROUPS: dict[str, range] = {
    "jaw": JAW,
    "right_brow": RIGHT_BROW,
    "left_brow": LEFT_BROW,
    "nose_bridge": NOSE_BRIDGE,
    "nose_lower": NOSE_LOWER,
    "right_eye": RIGHT_EYE,
    "left_eye": LEFT_EYE,
    "outer_lip": OUTER_LIP,
    "inner_lip": INNER_LIP,
    "brows": BROWS,
    "nose": NOSE,
    "eyes": EYES,
    "mouth": MOUTH,
}

#: Outline polylines for drawing: (group, closed?).
CONTOURS: tuple[tuple[range, bool], ...] = (
    (JAW, False),
    (RIGHT_BROW, False),
    (LEFT_BROW, False),
    (NOSE_BRIDGE, False),
    (NOSE_LOWER, False),
    (RIGHT_EYE, True),
    (LEFT_EYE, True),
    (OUTER_LIP, True),
    (INNER_LIP, True),
)

#: Named single points used by tests, alignment, synthetic compositing and scan cropping.
RIGHT_EYE_OUTER = 36
RIGHT_EYE_INNER = 39
LEFT_EYE_INNER = 42
LEFT_EYE_OUTER = 45
NOSE_TIP = 30
NASION = 27
#: The lowest centre point of the nose (subnasale).
SUBNASALE = 33
MOUTH_RIGHT = 48
MOUTH_LEFT = 54
CHIN = 8
#: Ends of the jaw line (the subject's right one is on the image's left in a frontal view).
JAW_RIGHT_END = 0
JAW_LEFT_END = 16


def _mirror_pairs() -> list[tuple[int, int]]:
    """Pairs (i, j) of points that swap under a left/right mirror (self-symmetric points are omitted)."""
    pairs: list[tuple[int, int]] = [(i, 16 - i) for i in range(8)]  # jaw 0..7 <-> 16..9, 8 is the chin
    pairs += [(17 + k, 26 - k) for k in range(5)]  # brows 17..21 <-> 26..22
    pairs += [(31, 35), (32, 34)]  # nostrils; 27-30 (bridge, tip) and 33 are on the midline
    # eyes: the outer corner maps to the outer corner, the upper lid to the upper lid (iBUG order is clockwise
    # in the image for both eyes, so the pairing is 36<->45, 37<->44, 38<->43, 39<->42, 40<->47, 41<->46).
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
    # outer lip 48..59 (51 and 57 on the midline), inner lip 60..67 (62 and 66 on the midline)
    pairs += [(48, 54), (49, 53), (50, 52), (59, 55), (58, 56)]
    pairs += [(60, 64), (61, 63), (67, 65)]
    return pairs


def _mirror_permutation() -> tuple[int, ...]:
    perm = list(range(NUM_LANDMARKS))
    for i, j in _mirror_pairs():
        perm[i], perm[j] = j, i
    return tuple(perm)


#: ``MIRROR_68[i]`` is the index of the point that takes the role of point ``i`` after a horizontal flip:
#: ``flipped_landmarks = mirror_x(landmarks)[MIRROR_68]``. An involution (``MIRROR_68[MIRROR_68[i]] == i``).
MIRROR_68: tuple[int, ...] = _mirror_permutation()

#: Indices of the points averaged/selected for Deep3D's 5 points (``extract_5p``), as index tuples.
FIVE_POINT_SOURCES: tuple[tuple[int, ...], ...] = (
    (RIGHT_EYE_OUTER, RIGHT_EYE_INNER),  # eye centre on the viewer's left
    (LEFT_EYE_INNER, LEFT_EYE_OUTER),  # eye centre on the viewer's right
    (NOSE_TIP,),
    (MOUTH_RIGHT,),  # mouth corner on the viewer's left
    (MOUTH_LEFT,),  # mouth corner on the viewer's right
)
#: Mirror permutation of the 5 points (eyes swap, nose stays, mouth corners swap).
MIRROR_5: tuple[int, ...] = (1, 0, 2, 4, 3)


def mirror_permutation(num_points: int = NUM_LANDMARKS) -> Tensor:
    """The flip re-indexing as a ``(num_points,)`` long tensor (68 or 5 points)."""
    if num_points == NUM_LANDMARKS:
        return torch.tensor(MIRROR_68, dtype=torch.long)
    if num_points == 5:
        return torch.tensor(MIRROR_5, dtype=torch.long)
    raise ValueError(f"no mirror permutation for {num_points} landmarks (68 or 5 supported)")


def flip_landmarks(landmarks: Tensor, width: int) -> Tensor:
    """Mirrors landmarks horizontally in an image of ``width`` pixels and re-indexes left/right.

    Args:
        landmarks: (..., P, 2) pixel coordinates (x right, y down, pixel-index units), P = 68 or 5; NaN allowed.
        width: image width in pixels; pixel-index convention maps ``x -> width - 1 - x``.

    Returns:
        (..., P, 2) landmarks of the flipped image, in the scheme's order (point 36 is again the outer corner
        of the eye on the viewer's left).
    """
    if landmarks.shape[-1] != 2:
        raise ValueError(f"landmarks must be (..., P, 2), got {tuple(landmarks.shape)}")
    perm = mirror_permutation(landmarks.shape[-2]).to(landmarks.device)
    flipped = landmarks.clone()
    flipped[..., 0] = (width - 1) - landmarks[..., 0]
    return flipped.index_select(-2, perm)


def five_points(landmarks: Tensor) -> Tensor:
    """Deep3D's 5 points from 68 landmarks.

    Args:
        landmarks: (..., 68, 2) (or (..., 68, D)) landmark coordinates.

    Returns:
        (..., 5, D): eye centre (mean of 36, 39), eye centre (mean of 42, 45), nose tip 30, mouth corners 48
        and 54 — Deep3D's order after its ``[1, 2, 0, 3, 4]`` reordering (eyes, nose, mouth).
    """
    if landmarks.shape[-2] != NUM_LANDMARKS:
        raise ValueError(f"five_points needs (..., 68, D) landmarks, got {tuple(landmarks.shape)}")
    pts = [landmarks[..., list(src), :].mean(dim=-2) for src in FIVE_POINT_SOURCES]
    return torch.stack(pts, dim=-2)


def five_points_np(landmarks: np.ndarray) -> np.ndarray:
    """NumPy version of :func:`five_points`: (..., 68, D) -> (..., 5, D)."""
    if landmarks.shape[-2] != NUM_LANDMARKS:
        raise ValueError(f"five_points needs (..., 68, D) landmarks, got {landmarks.shape}")
    pts = [landmarks[..., list(src), :].mean(axis=-2) for src in FIVE_POINT_SOURCES]
    return np.stack(pts, axis=-2)
