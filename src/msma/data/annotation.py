"""Checks of annotation arrays read from users' files (``.mat`` fields, ``.pts`` points).

An annotation is complete and plausible or it is not one: every reader of ground truth (3DDFA ``.mat``, 300W-LP
landmark files, ``.pts``) raises a :class:`ValueError` naming the file and the field for

* a field that is not a real numeric array (a MATLAB struct, cell array, string or complex array:
  :func:`msma.utils.matlab.numeric_field`);
* a non-finite coordinate;
* points no photo can hold: a coordinate beyond :data:`MAX_COORDINATE_PX` pixels from the origin, or 68 points
  whose bounding box has no width or no height (every 3DDFA metric divides by ``sqrt(w * h)`` of that box).

Callers catch ``ValueError`` and skip the photo with reason ``bad_annotation``; no other photo is scored in
its place.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Largest |coordinate| in pixels accepted in an annotation: 12x the longest side the loader keeps
#: (:data:`~msma.data.io.MAX_SIDE`, 8,192 px); a point farther out is a broken file, not a face.
MAX_COORDINATE_PX = 1.0e5


def check_points(points: np.ndarray, path: Path, what: str = "") -> np.ndarray:
    """Checks (K, 2+) annotated points (x, y first, pixels): finite, within :data:`MAX_COORDINATE_PX`, and with
    a bounding box of positive width and height.

    Args:
        points: (K, 2) or (K, 3) points.
        path: the file they were read from (named in the message).
        what: the field they were read from (``"pt3d_68"``), named after the file; empty: the file alone.

    Returns:
        ``points`` unchanged.

    Raises:
        ValueError: ``"<path>: <what>: <problem>"``.
    """
    where = f"{path}: {what}: " if what else f"{path}: "
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] < 2 or pts.shape[0] < 2:
        raise ValueError(f"{where}shape {pts.shape}, expected (K >= 2, 2 or 3) points")
    bad = int((~np.isfinite(pts).all(axis=1)).sum())
    if bad:
        raise ValueError(f"{where}{bad} of the {pts.shape[0]} points are not finite numbers")
    far = float(np.abs(pts).max())
    if far > MAX_COORDINATE_PX:
        raise ValueError(f"{where}a coordinate of {far:.3g} px (at most {MAX_COORDINATE_PX:.0e})")
    extent = pts[:, :2].max(axis=0) - pts[:, :2].min(axis=0)
    if not (extent > 0).all():
        raise ValueError(
            f"{where}the points span {extent[0]:g} x {extent[1]:g} px (a face needs a positive width and height)"
        )
    return points
