"""The jaw and brows of a face model's 68 landmarks, placed where photos' annotations put them at the pose faces
are seen in.

ICT-FaceKit's README lists 68 Multi-PIE landmark vertices. Its 51 inner points (brows, nose, eyes, mouth) mark
fixed places on the face; its 17 jaw points lie on the face's outline *as the mean face is seen at ICT's zero
pose*. Photos do not show faces at that pose on average: the 51 inner points of the mean face match the mean
68-point layout of photographed faces best at a pitch of about 12 degrees in ICT's frame (chin towards the
camera; :func:`photo_pitch`), and fitting MediaPipe's dense landmarks to near-frontal photos lands at 9-14 degrees
as well. At that pitch the README's jaw sides project 6-15 % of the face size above the outline that both
annotation conventions (the 2D contour of 300-W / Multi-PIE and AFLW2000-3D's 3D jaw, which coincide for a face
seen head-on) put there. The 68 landmarks of a face model should be one rigid set that agrees with itself at the
poses it is fitted at, so the jaw sides are re-selected:

1. pose the mean face at the pitch whose orthographic projection of the 51 inner points best matches the
   reference layout :data:`MEAN_LANDMARKS_2D` after a 2D similarity (grid search, 0.5 degrees);
2. map the reference jaw points into that projection with the same similarity;
3. for jaw points 0-5 and 11-16 take the vertex nearest to the mapped reference point among the *candidates*:
   rendered skin vertices on the outline of that view (unit normal ``|n_z| <`` :data:`OUTLINE_NZ`) within
   :data:`CANDIDATE_RADIUS_MM` of the README vertex; on a mirror-symmetric mesh the two sides are chosen as one
   mirror pair (``j`` and its :data:`~msma.data.landmark_index.MIRROR_68` partner ``16 - j``, summed distance), so a mirrored face has mirrored landmarks exactly (the
   horizontal-flip augmentation relies on it). The chin points 6-10 keep the README's vertices: the mean
   face's chin ends above the reference chin (a difference of face length that identity fitting resolves; no
   rendered vertex reaches the reference there).

The brows come first (:func:`reselect_brows`): ICT-FaceKit's README brow vertices sit 6-11 % of the inter-ocular
distance above the reference brows when the mean face is posed and mapped by its nose, eye and mouth points alone
(and 8-15 % above the hand-placed brows of photos after fitting the face model to MediaPipe's dense landmarks,
which place the brow surface itself: the vertices, not the fitted shape, are off). Each brow point takes the
front-facing face vertex within :data:`BROW_RADIUS_MM` nearest to its reference point, mirror pairs together
(ICT: 4-6 mm lower, within 3 % of the reference). With these brows the 51 inner points match the reference best at
10.5 degrees, the pitch the jaw sides are then chosen at.

The result is one fixed vertex per landmark, as before: the landmarks still move rigidly with the face and stay
on the hidden side of a profile (AFLW2000-3D's 3D convention).

Reference layout: :data:`MEAN_LANDMARKS_2D` is OpenFace's ``TEMPLATE`` (cmusatyalab/openface,
``openface/align_dlib.py``, Apache License 2.0): the mean of dlib's 68 landmarks (iBUG 300-W order) over aligned
face photos, in a unit square (x right, y down).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from msma.data.landmark_index import MIRROR_68
from msma.face_model.normals import mesh_vertex_normals
from msma.face_model.rotation import rotation_x
from msma.utils.geometry import umeyama

#: OpenFace's mean 68-point layout (see the module docstring), (x, y) with y down, iBUG order.
MEAN_LANDMARKS_2D = np.array(
    [
        (0.0792396913815, 0.339223741112), (0.0829219487236, 0.456955367943),
        (0.0967927109165, 0.575648016728), (0.122141515615, 0.691921601066),
        (0.168687863544, 0.800341263616), (0.239789390707, 0.895732504778),
        (0.325662452515, 0.977068762493), (0.422318282013, 1.04329000149),
        (0.531777802068, 1.06080371126), (0.641296298053, 1.03981924107),
        (0.738105872266, 0.972268833998), (0.824444363295, 0.889624082279),
        (0.894792677532, 0.792494155836), (0.939395486253, 0.681546643421),
        (0.96111933829, 0.562238253072), (0.970579841181, 0.441758925744),
        (0.971193274221, 0.322118743967), (0.163846223133, 0.249151738053),
        (0.21780354657, 0.204255863861), (0.291299351124, 0.192367318323),
        (0.367460241458, 0.203582210627), (0.4392945113, 0.233135599851),
        (0.586445962425, 0.228141644834), (0.660152671635, 0.195923841854),
        (0.737466449096, 0.182360984545), (0.813236546239, 0.192828009114),
        (0.8707571886, 0.235293377042), (0.51534533827, 0.31863546193),
        (0.516221448289, 0.396200446263), (0.517118861835, 0.473797687758),
        (0.51816430343, 0.553157797772), (0.433701156035, 0.604054457668),
        (0.475501237769, 0.62076344024), (0.520712933176, 0.634268222208),
        (0.565874114041, 0.618796581487), (0.607054002672, 0.60157671656),
        (0.252418718401, 0.331052263829), (0.298663015648, 0.302646354002),
        (0.355749724218, 0.303020650651), (0.403718978315, 0.33867711083),
        (0.352507175597, 0.349987615384), (0.296791759886, 0.350478978225),
        (0.631326076346, 0.334136672344), (0.679073381078, 0.29645404267),
        (0.73597236153, 0.294721285802), (0.782865376271, 0.321305281656),
        (0.740312274764, 0.341849376713), (0.68499850091, 0.343734332172),
        (0.353167761422, 0.746189164237), (0.414587777921, 0.719053835073),
        (0.477677654595, 0.706835892494), (0.522732900812, 0.717092275768),
        (0.569832064287, 0.705414478982), (0.635195811927, 0.71565572516),
        (0.69951672331, 0.739419187253), (0.639447159575, 0.805236879972),
        (0.576410514055, 0.835436670169), (0.525398405766, 0.841706377792),
        (0.47641545769, 0.837505914975), (0.41379548902, 0.810045601727),
        (0.380084785646, 0.749979603086), (0.477955996282, 0.74513234612),
        (0.523389793327, 0.748924302636), (0.571057789237, 0.74332894691),
        (0.672409137852, 0.744177032192), (0.572539621444, 0.776609286626),
        (0.5240106503, 0.783370783245), (0.477561227414, 0.778476346951),
    ],
    dtype=np.float64,
)  # fmt: skip

#: Jaw points re-selected (the sides); the chin points 6-10 keep the source's vertices.
JAW_SIDES = (0, 1, 2, 3, 4, 5, 11, 12, 13, 14, 15, 16)
#: Outline vertices of a view: unit normal with |z| below this (z towards the camera).
OUTLINE_NZ = 0.35
#: A new jaw vertex lies within this distance of the source's vertex, mm.
CANDIDATE_RADIUS_MM = 30.0
#: Brow points (all re-selected, see :func:`reselect_brows`).
BROWS = tuple(range(17, 27))
#: Points that place the brows' reference: nose, eyes and mouth (27-67), whose layout is not in question.
_CORE = np.arange(27, 68)
#: A new brow vertex lies within this distance of the source's vertex, mm.
BROW_RADIUS_MM = 15.0
#: Brow candidates face the camera at the photo pitch: unit normal z above this.
BROW_FRONT_NZ = 0.3
#: Pitch search range and step, degrees.
PITCH_RANGE_DEG = (-20.0, 40.0)
PITCH_STEP_DEG = 0.5

_INNER = np.arange(17, 68)


@dataclass(frozen=True)
class JawSelection:
    """Result of :func:`reselect_jaw`.

    Attributes:
        landmark_idx: (68,) int64 vertex indices: the source's, with the jaw sides replaced.
        pitch_deg: the pitch (degrees, rotation about +x as :func:`msma.face_model.rotation.rotation_x`) at which
            the inner points best match :data:`MEAN_LANDMARKS_2D`.
        inner_residual: mean distance of the 51 inner points to the reference after the similarity, in units of
            the reference face size (sqrt of its box area).
        jaw_residual_before / jaw_residual_after: (17,) the same for each jaw point, the source's vertices and the
            selected ones.
    """

    landmark_idx: np.ndarray
    pitch_deg: float
    inner_residual: float
    jaw_residual_before: np.ndarray
    jaw_residual_after: np.ndarray


def mirror_vertices(vertices: np.ndarray, tol_mm: float = 0.01) -> np.ndarray | None:
    """(N,) index of each vertex's mirror image across x = 0 (-1 where there is none within ``tol_mm``), or None
    when most vertices have none (not a mirror-symmetric mesh)."""
    from scipy.spatial import cKDTree

    dist, idx = cKDTree(vertices).query(vertices * np.array([-1.0, 1.0, 1.0]))
    found = dist < tol_mm
    if found.mean() < 0.9:
        return None
    return np.where(found, idx, -1).astype(np.int64)


@dataclass(frozen=True)
class BrowSelection:
    """Result of :func:`reselect_brows`.

    Attributes:
        landmark_idx: (68,) int64 vertex indices: the source's, with the brow points (17-26) replaced.
        pitch_deg: the pitch (degrees) at which the nose, eye and mouth points best match the reference.
        brow_offset_before / brow_offset_after: (10,) signed vertical offset of each brow point from the reference
            (image y down: negative = above it), in units of the reference's inter-ocular distance (eye centres),
            the source's vertices and the selected ones.
    """

    landmark_idx: np.ndarray
    pitch_deg: float
    brow_offset_before: np.ndarray
    brow_offset_after: np.ndarray


def _rot_x(deg: float) -> np.ndarray:
    """(3, 3) :func:`~msma.face_model.rotation.rotation_x` of ``deg`` degrees, float64 numpy."""
    return rotation_x(torch.tensor([np.radians(deg)], dtype=torch.float64))[0].numpy()


def _project(points: np.ndarray, deg: float) -> np.ndarray:
    """Orthographic image coordinates (x right, y down) of model-frame points (y up) pitched by ``deg``."""
    p = points @ _rot_x(deg).T
    return np.stack([p[:, 0], -p[:, 1]], axis=1)


def _reference_size() -> float:
    box = MEAN_LANDMARKS_2D.max(0) - MEAN_LANDMARKS_2D.min(0)
    return float(np.sqrt(box[0] * box[1]))


def _to_reference(proj68: np.ndarray, subset: np.ndarray = _INNER) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Similarity of the projected ``subset`` points onto the reference's; returns (mapped 68, s, R, t)."""
    s, rot, t = umeyama(proj68[subset], MEAN_LANDMARKS_2D[subset])
    return proj68 @ (s * rot).T + t, s, rot, t


def _best_pitch(pts68: np.ndarray, subset: np.ndarray) -> tuple[float, float]:
    """Grid search of the pitch at which the ``subset`` points best match the reference (see :func:`photo_pitch`)."""
    size = _reference_size()
    best = (0.0, np.inf)
    lo, hi = PITCH_RANGE_DEG
    for deg in np.arange(lo, hi + 1e-9, PITCH_STEP_DEG):
        mapped, _, _, _ = _to_reference(_project(pts68, float(deg)), subset)
        res = float(np.linalg.norm(mapped[subset] - MEAN_LANDMARKS_2D[subset], axis=1).mean()) / size
        if res < best[1]:
            best = (float(deg), res)
    return best


def photo_pitch(mean_shape: np.ndarray, landmark_idx: np.ndarray) -> tuple[float, float]:
    """Pitch (degrees) at which the mean face's 51 inner points best match :data:`MEAN_LANDMARKS_2D`.

    Args:
        mean_shape: (N, 3) mean face, model frame (x right of the viewer, y up, z to the camera), any unit.
        landmark_idx: (68,) vertex indices.

    Returns:
        (pitch in degrees, mean inner-point distance in reference face sizes).
    """
    return _best_pitch(np.asarray(mean_shape, dtype=np.float64)[np.asarray(landmark_idx)], _INNER)


def _choose_mirrored(
    points: tuple[int, ...],
    idx: np.ndarray,
    verts: np.ndarray,
    pool: np.ndarray,
    radius_mm: float,
    mapped: np.ndarray,
    part: str,
    kind: str,
) -> np.ndarray:
    """For each landmark in ``points``: the vertex of ``pool`` within ``radius_mm`` of its current vertex whose mapped
    position is nearest to the reference point; on a mirror-symmetric mesh a point and its
    :data:`~msma.data.landmark_index.MIRROR_68` partner are chosen as one mirror pair (summed distance).

    Args:
        points: landmark numbers to re-select.
        idx: (68,) current vertex indices.
        verts: (N, 3) mean face, mm.
        pool: candidate vertex indices.
        radius_mm: search radius around the current vertex.
        mapped: (N, 2) every vertex in reference coordinates.
        part, kind: words of the error message (``"jaw"``, ``"outline vertex"``).

    Returns:
        (68,) int64: ``idx`` with ``points`` replaced.

    Raises:
        ValueError: a point without a candidate.
    """
    mirror = mirror_vertices(verts)
    new = idx.copy()
    for j in points:
        partner = MIRROR_68[j]
        # the mirror map when j and its partner are a mirror pair on this mesh (chosen together), else None
        pair = mirror if mirror is not None and mirror[idx[j]] == idx[partner] else None
        if pair is not None and j > partner:
            continue  # chosen with its partner
        near = pool[np.linalg.norm(verts[pool] - verts[idx[j]], axis=1) < radius_mm]
        if pair is not None:
            near = near[pair[near] >= 0]
        if near.size == 0:
            what = f"{kind} with a mirror vertex" if pair is not None else kind
            raise ValueError(f"{part} landmark {j}: no {what} within {radius_mm} mm of vertex {idx[j]}")
        cost = np.linalg.norm(mapped[near] - MEAN_LANDMARKS_2D[j], axis=1)
        if pair is not None:
            cost = cost + np.linalg.norm(mapped[pair[near]] - MEAN_LANDMARKS_2D[partner], axis=1)
        new[j] = near[np.argmin(cost)]
        if pair is not None:
            new[partner] = pair[new[j]]
    return new


def reselect_jaw(
    mean_shape: np.ndarray, mesh_tri: np.ndarray, candidates: np.ndarray, landmark_idx: np.ndarray
) -> JawSelection:
    """Re-selects the jaw sides of ``landmark_idx`` (steps 1-3 of the module docstring).

    Args:
        mean_shape: (N, 3) mean face in mm, model frame.
        mesh_tri: (F, 3) triangles of the mesh (for the normals).
        candidates: (N,) bool, vertices a jaw landmark may move to (rendered skin).
        landmark_idx: (68,) the source's vertex indices (inner points and chin are kept).

    Returns:
        :class:`JawSelection`.

    Raises:
        ValueError: when a jaw side point has no candidate within :data:`CANDIDATE_RADIUS_MM`.
    """
    verts = np.asarray(mean_shape, dtype=np.float64)
    idx = np.asarray(landmark_idx, dtype=np.int64)
    pitch, inner_res = photo_pitch(verts, idx)
    proj = _project(verts, pitch)
    _, s, rot, t = _to_reference(proj[idx])
    mapped = proj @ (s * rot).T + t  # every vertex in reference coordinates
    normals = mesh_vertex_normals(torch.from_numpy(verts)[None], torch.as_tensor(mesh_tri))[0].numpy()
    normals = normals @ _rot_x(pitch).T
    outline = np.where(np.asarray(candidates, dtype=bool) & (np.abs(normals[:, 2]) < OUTLINE_NZ))[0]
    size = _reference_size()
    new = _choose_mirrored(JAW_SIDES, idx, verts, outline, CANDIDATE_RADIUS_MM, mapped, "jaw", "outline vertex")
    before = np.linalg.norm(mapped[idx[:17]] - MEAN_LANDMARKS_2D[:17], axis=1) / size
    after = np.linalg.norm(mapped[new[:17]] - MEAN_LANDMARKS_2D[:17], axis=1) / size
    return JawSelection(new, pitch, inner_res, before, after)


def reselect_brows(
    mean_shape: np.ndarray, mesh_tri: np.ndarray, candidates: np.ndarray, landmark_idx: np.ndarray
) -> BrowSelection:
    """Re-selects the brow points of ``landmark_idx`` where photos' annotations put them.

    The mean face is posed at the pitch where its nose, eye and mouth points (27-67) best match
    :data:`MEAN_LANDMARKS_2D` and mapped onto it by the similarity of those points alone, so the brows' own offset
    moves neither the pose nor the map (ICT: 11 degrees; :func:`photo_pitch` with the README's brows says 12.5, with
    the re-selected ones 10.5); each brow point then takes the vertex nearest to its reference point among
    the *candidates* that face the camera there (unit normal ``n_z >`` :data:`BROW_FRONT_NZ`) within
    :data:`BROW_RADIUS_MM` of the source's vertex, mirror pairs chosen together as the jaw's
    (:func:`reselect_jaw`). ICT-FaceKit's README brow vertices lie 6-11 % of the inter-ocular distance above the
    reference there (and 8-15 % above the hand-placed points of photos after fitting the model to MediaPipe's dense
    landmarks, which place the brow surface itself).

    Args:
        mean_shape: (N, 3) mean face in mm, model frame.
        mesh_tri: (F, 3) triangles of the mesh (for the normals).
        candidates: (N,) bool, vertices a brow landmark may move to (the rendered face area).
        landmark_idx: (68,) vertex indices (every point but the brows is kept).

    Returns:
        :class:`BrowSelection`.

    Raises:
        ValueError: when a brow point has no candidate within :data:`BROW_RADIUS_MM`.
    """
    verts = np.asarray(mean_shape, dtype=np.float64)
    idx = np.asarray(landmark_idx, dtype=np.int64)
    pitch, _ = _best_pitch(verts[idx], _CORE)
    proj = _project(verts, pitch)
    _, s, rot, t = _to_reference(proj[idx], _CORE)
    mapped = proj @ (s * rot).T + t  # every vertex in reference coordinates
    normals = mesh_vertex_normals(torch.from_numpy(verts)[None], torch.as_tensor(mesh_tri))[0].numpy()
    normals = normals @ _rot_x(pitch).T
    front = np.where(np.asarray(candidates, dtype=bool) & (normals[:, 2] > BROW_FRONT_NZ))[0]
    new = _choose_mirrored(BROWS, idx, verts, front, BROW_RADIUS_MM, mapped, "brow", "front-facing vertex")
    io = float(np.linalg.norm(MEAN_LANDMARKS_2D[42:48].mean(0) - MEAN_LANDMARKS_2D[36:42].mean(0)))
    brows = list(BROWS)
    before = (mapped[idx[brows], 1] - MEAN_LANDMARKS_2D[brows, 1]) / io
    after = (mapped[new[brows], 1] - MEAN_LANDMARKS_2D[brows, 1]) / io
    return BrowSelection(new, pitch, before, after)
