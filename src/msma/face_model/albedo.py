"""An albedo *prior* for face models without a measured albedo space (ICT-FaceKit Light has none).

This is **not** a statistical albedo model learned from scans: it is a hand-designed linear prior in the same
form as BFM's texture model (``albedo = mean + basis @ tex`` with ``tex ~ N(0, 1)``), built from the mesh's own
geometry and its 68 landmarks so it transfers to any topology that has them. Every basis vector is pre-scaled
by a plausible standard deviation (in albedo units, RGB in [0, 1]), so unit-normal coefficients give plausible
faces; +-3 sigma may leave [0, 1] slightly (the model does not clamp albedo, like Deep3D).

Components (``ALBEDO_MODE_NAMES``):

* mean: a uniform skin colour (close to the average of BFM09's mean texture, /255 as Deep3D uses it), blended
  towards a lip colour inside the outer-lip polygon, a brow colour along the brow landmarks, and sclera / iris /
  pupil colours on the eyeballs (the iris is painted on the eyeball's front cap), a dark red on the mouth
  interior;
* global skin colour: brightness (multiplicative, the dominant melanin axis), redness (haemoglobin),
  yellowness;
* low-frequency spatial variation of skin luminance and redness: the 5 polynomials of degree 1..2 in the
  frontal (x, y) coordinates normalised by the landmark box, orthonormalised over the skin;
* regions: lip redness and darkness, brow darkness, stubble shadow (chin, jaw, upper lip), cheek flush;
* eyes: iris brightness and iris blue-vs-brown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from matplotlib.path import Path as PolyPath

from msma.data.landmark_index import (
    BROWS,
    CHIN,
    JAW,
    LEFT_BROW,
    LEFT_EYE,
    LEFT_EYE_OUTER,
    MOUTH_LEFT,
    MOUTH_RIGHT,
    OUTER_LIP,
    RIGHT_BROW,
    RIGHT_EYE,
    RIGHT_EYE_OUTER,
    SUBNASALE,
)

#: Mean skin albedo, RGB in [0, 1] (approximately the average of BFM09's mean texture / 255).
SKIN_RGB = (0.70, 0.53, 0.45)
LIP_RGB = (0.60, 0.36, 0.34)
BROW_RGB = (0.30, 0.22, 0.17)
SCLERA_RGB = (0.78, 0.74, 0.70)
IRIS_RGB = (0.30, 0.20, 0.12)
PUPIL_RGB = (0.04, 0.04, 0.04)
MOUTH_RGB = (0.35, 0.12, 0.12)
#: Limbus (iris) and pupil radii in mm (adult iris diameter ~11.7 mm; pupil 3-5 mm in daylight).
IRIS_RADIUS_MM = 5.85
PUPIL_RADIUS_MM = 2.0

ALBEDO_MODE_NAMES: tuple[str, ...] = (
    "skin_brightness",
    "skin_redness",
    "skin_yellowness",
    "lum_x",
    "lum_y",
    "lum_xy",
    "lum_x2",
    "lum_y2",
    "red_x",
    "red_y",
    "red_xy",
    "red_x2",
    "red_y2",
    "lip_redness",
    "lip_darkness",
    "brow_darkness",
    "stubble",
    "cheek_flush",
    "iris_brightness",
    "iris_blueness",
)


@dataclass(frozen=True)
class AlbedoPrior:
    """A linear albedo prior.

    Attributes:
        mean: (N, 3) float32 mean albedo, RGB in [0, 1].
        basis: (N, 3, K) float32 basis, pre-scaled so the coefficients are ~N(0, 1).
        std: (K,) float32 prior std of the coefficients (ones: the scale is in the basis).
        names: K mode names.
        skin_mask: (N,) float32 in [0, 1]: 1 on skin, 0 on eyes, lips, brows (soft edges).
    """

    mean: np.ndarray
    basis: np.ndarray
    std: np.ndarray
    names: tuple[str, ...]
    skin_mask: np.ndarray


def _row_normalised_adjacency(n: int, tri: np.ndarray) -> sp.csr_matrix:
    """Vertex adjacency (including the vertex itself) with rows summing to 1."""
    i = np.concatenate([tri[:, 0], tri[:, 1], tri[:, 2], tri[:, 1], tri[:, 2], tri[:, 0], np.arange(n)])
    j = np.concatenate([tri[:, 1], tri[:, 2], tri[:, 0], tri[:, 0], tri[:, 1], tri[:, 2], np.arange(n)])
    adj = sp.coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)).tocsr()
    adj.data[:] = 1.0  # duplicates from shared edges count once
    deg = np.asarray(adj.sum(axis=1)).ravel()
    return sp.diags(1.0 / deg) @ adj


def _smooth(w: sp.csr_matrix, values: np.ndarray, iterations: int) -> np.ndarray:
    out = values.astype(np.float64)
    for _ in range(iterations):
        out = w @ out
    return out


def _polyline_distance(points: np.ndarray, polyline: np.ndarray) -> np.ndarray:
    """Distance from (N, 2) points to a (M, 2) open polyline."""
    best = np.full(len(points), np.inf)
    for a, b in zip(polyline[:-1], polyline[1:], strict=True):
        ab = b - a
        t = np.clip(((points - a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
        d = np.linalg.norm(points - (a + t[:, None] * ab), axis=1)
        best = np.minimum(best, d)
    return best


def _orthonormal_columns(funcs: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Gram-Schmidt of (N, K) columns against the constant and each other under ``weight``; unit weighted RMS."""
    wsum = weight.sum()
    cols = [np.ones(len(funcs))]
    out = []
    for k in range(funcs.shape[1]):
        f = funcs[:, k].astype(np.float64).copy()
        for c in cols:
            f -= (weight * f * c).sum() / (weight * c * c).sum() * c
        f /= np.sqrt((weight * f * f).sum() / wsum)
        cols.append(f)
        out.append(f)
    return np.stack(out, axis=1)


def build_albedo_prior(
    vertices: np.ndarray,
    tri: np.ndarray,
    landmark_idx: np.ndarray,
    eyeball_groups: Sequence[np.ndarray] = (),
    mouth_idx: np.ndarray | None = None,
) -> AlbedoPrior:
    """Builds the albedo prior described in the module docstring on a given mesh.

    Args:
        vertices: (N, 3) mean shape in mm, model frame (x right, y up, z towards the camera), frontal.
        tri: (F, 3) all triangles of the mesh (for smoothing the region masks along the surface).
        landmark_idx: (68,) iBUG/Multi-PIE landmark vertex indices.
        eyeball_groups: one index array per eyeball surface (sphere-like, looking along +z); its front cap
            within :data:`IRIS_RADIUS_MM` of the eye axis gets the iris colour, within
            :data:`PUPIL_RADIUS_MM` the pupil colour, the rest the sclera colour.
        mouth_idx: vertex indices of the mouth interior (dark, not skin), or None.

    Returns:
        :class:`AlbedoPrior` with ``len(ALBEDO_MODE_NAMES)`` modes.
    """
    v = np.asarray(vertices, dtype=np.float64)
    n = len(v)
    lm = v[np.asarray(landmark_idx)]
    w = _row_normalised_adjacency(n, np.asarray(tri))
    skin_rgb, lip_rgb, brow_rgb = np.array(SKIN_RGB), np.array(LIP_RGB), np.array(BROW_RGB)

    eye = np.zeros(n, dtype=bool)
    iris = np.zeros(n)
    pupil = np.zeros(n)
    for group in eyeball_groups:
        g = np.asarray(group, dtype=np.int64)
        eye[g] = True
        centre = v[g].mean(axis=0)
        r = np.linalg.norm(v[g, :2] - centre[:2], axis=1)
        front = v[g, 2] > centre[2]
        iris[g] = (front & (r < IRIS_RADIUS_MM)).astype(np.float64)
        pupil[g] = (front & (r < PUPIL_RADIUS_MM)).astype(np.float64)
    mouth = np.zeros(n, dtype=bool)
    if mouth_idx is not None:
        mouth[np.asarray(mouth_idx, dtype=np.int64)] = True
    face = (~eye & ~mouth).astype(np.float64)

    eye_l, eye_r = lm[RIGHT_EYE].mean(axis=0), lm[LEFT_EYE].mean(axis=0)
    d_eye = float(np.linalg.norm(eye_l - eye_r))
    xy = v[:, :2]

    # Lips: inside the outer-lip polygon (48..59), on the front of the face.
    lip_poly = PolyPath(lm[OUTER_LIP, :2])
    lips = lip_poly.contains_points(xy, radius=0.0) & (v[:, 2] > lm[OUTER_LIP, 2].min() - 0.1 * d_eye)
    lips_soft = np.clip(_smooth(w, lips * face, 2), 0.0, 1.0) * face

    # Brows: a band around the brow landmarks (17..21, 22..26) on the front of the face.
    brow_d = np.minimum(_polyline_distance(xy, lm[RIGHT_BROW, :2]), _polyline_distance(xy, lm[LEFT_BROW, :2]))
    brows = (brow_d < 0.09 * d_eye) & (v[:, 2] > lm[BROWS, 2].min() - 0.15 * d_eye)
    brows_soft = np.clip(_smooth(w, brows * face, 2), 0.0, 1.0) * face

    # Stubble: below the nose base, above just under the chin, between the jaw contour points 3 and 13.
    below_nose = v[:, 1] < lm[SUBNASALE, 1] - 0.03 * d_eye
    above_chin = v[:, 1] > lm[CHIN, 1] - 0.3 * d_eye
    jaw_r, jaw_l = JAW[3], JAW[13]  # the jaw line at the height of the mouth corners
    between_jaw = (v[:, 0] > lm[jaw_r, 0]) & (v[:, 0] < lm[jaw_l, 0]) & (v[:, 2] > lm[jaw_r, 2] - 0.1 * d_eye)
    stubble = (below_nose & above_chin & between_jaw).astype(np.float64) * face
    stubble = np.clip(_smooth(w, stubble, 6), 0.0, 1.0) * (1.0 - lips_soft) * face

    # Cheeks: Gaussian blobs half-way between the outer eye corners and the mouth corners.
    cheek = np.zeros(n)
    for c in (0.5 * (lm[RIGHT_EYE_OUTER] + lm[MOUTH_RIGHT]), 0.5 * (lm[LEFT_EYE_OUTER] + lm[MOUTH_LEFT])):
        cheek += np.exp(-0.5 * (np.linalg.norm(v - c, axis=1) / (0.3 * d_eye)) ** 2)
    cheek = np.clip(cheek, 0.0, 1.0) * face * (1.0 - lips_soft)

    # Mean albedo.
    mean = np.tile(skin_rgb, (n, 1))
    mean = mean * (1 - lips_soft[:, None]) + lip_rgb * lips_soft[:, None]
    brow_blend = 0.7 * brows_soft[:, None]
    mean = mean * (1 - brow_blend) + brow_rgb * brow_blend
    mean[eye] = SCLERA_RGB
    mean[mouth] = MOUTH_RGB
    iris_col = np.array(IRIS_RGB) * (1 - pupil[:, None]) + np.array(PUPIL_RGB) * pupil[:, None]
    mean = np.where(iris[:, None] > 0, iris_col, mean)

    skin_w = face * (1.0 - lips_soft) * (1.0 - brows_soft)

    # Low-frequency spatial functions of the frontal coordinates, normalised by the landmark box.
    x0 = 0.5 * (lm[JAW, 0].max() + lm[JAW, 0].min())
    hx = 0.5 * (lm[JAW, 0].max() - lm[JAW, 0].min())
    y0 = 0.5 * (lm[BROWS, 1].max() + lm[CHIN, 1])
    hy = 0.5 * (lm[BROWS, 1].max() - lm[CHIN, 1])
    u = np.clip((v[:, 0] - x0) / hx, -1.2, 1.2)
    t = np.clip((v[:, 1] - y0) / hy, -1.2, 1.2)
    polys = np.stack([u, t, u * t, 0.5 * (3 * u * u - 1), 0.5 * (3 * t * t - 1)], axis=1)
    spatial = _orthonormal_columns(polys, skin_w) * face[:, None]

    red_dir = np.array([0.8, -0.4, -0.25])
    yellow_dir = np.array([0.3, 0.25, -0.9])
    modes: list[np.ndarray] = [
        0.18 * mean * face[:, None],  # skin brightness (melanin axis), multiplicative
        0.018 * face[:, None] * red_dir,
        0.02 * face[:, None] * yellow_dir,
    ]
    modes += [0.03 * spatial[:, k, None] * skin_rgb for k in range(spatial.shape[1])]
    modes += [0.008 * spatial[:, k, None] * red_dir for k in range(spatial.shape[1])]
    modes += [
        0.05 * lips_soft[:, None] * np.array([0.6, -0.5, -0.3]),
        -0.08 * lips_soft[:, None] * lip_rgb,
        -0.12 * brows_soft[:, None] * skin_rgb,
        -0.06 * stubble[:, None] * np.array([1.0, 0.95, 0.8]),
        0.03 * cheek[:, None] * red_dir,
        0.12 * (iris * (1 - pupil))[:, None] * np.array([1.0, 1.0, 1.0]),
        0.08 * (iris * (1 - pupil))[:, None] * np.array([-0.7, 0.1, 1.0]),
    ]
    basis = np.stack(modes, axis=2)
    if basis.shape[2] != len(ALBEDO_MODE_NAMES):  # pragma: no cover - guards edits of the list above
        raise AssertionError("albedo modes and ALBEDO_MODE_NAMES disagree")
    return AlbedoPrior(
        mean=mean.astype(np.float32),
        basis=basis.astype(np.float32),
        std=np.ones(basis.shape[2], dtype=np.float32),
        names=ALBEDO_MODE_NAMES,
        skin_mask=np.clip(skin_w, 0.0, 1.0).astype(np.float32),
    )
