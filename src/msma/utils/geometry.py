"""Small geometry helpers shared by the face model's conversion and the fitting."""

from __future__ import annotations

import numpy as np


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity ``dst ~ s R src + t`` (Umeyama 1991), a proper rotation (det R = +1).

    Args:
        src, dst: (K, D) corresponding points (D = 2 or 3), K >= D.

    Returns:
        scale s, rotation R (D, D), translation t (D,).
    """
    if src.shape != dst.shape or src.ndim != 2:
        raise ValueError(f"umeyama: src and dst must be (K, D) of one shape, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    cov = b.T @ a / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.eye(src.shape[1])
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1, -1] = -1.0
    rot = u @ d @ vt
    scale = float(np.trace(np.diag(sig) @ d) / a.var(0).sum())
    return scale, rot, mu_d - scale * rot @ mu_s
