"""ICT-FaceKit (ICT Face Model Light, MIT) -> msma face model.

Source: the upstream repository archive ``ICT-FaceKit-<commit>.zip`` (GitHub ``/archive/<commit>.zip``) or an
extracted copy of it. Used files (all under ``FaceXModel/``): ``generic_neutral_mesh.obj`` (topology, UVs,
neutral shape), ``identity000..099.obj`` (100 PCA identity modes, stored as *full meshes* = neutral + mode),
the 53 ARKit-style expression OBJs named in ``vertex_indices.json`` (also full meshes), and the 68 Multi-PIE
landmark vertex indices listed in the repository ``README.md`` (cross-checked against
``vertex_indices.json["idx_to_landmark_verts"]``).

Conversions:

* Units: the OBJs are in **centimetres** (neutral mesh: jaw landmarks 0 and 16 are 14.7 units apart, outer
  eye corners 8.9, brows to chin 13.5: a human face in cm) -> millimetres (x10).
* Frame: the OBJ frame is already x = subject's left (viewer's right), y up, z out of the face; kept.
* Centre: the mean of the *narrow face area* vertices of the neutral mesh (x set to 0, the mesh is symmetric)
  moves to the origin, like Deep3D's ``recenter`` of BFM's front face.
* Identity modes: ``identityK - neutral``. The modes are already scaled by their standard deviations (their
  RMS decreases with K, and upstream ``sample_random.py`` draws the weights from N(0, 1)), so identity
  coefficients are ~N(0, 1) and ``id_std`` is 1.
* Expressions: ``expression - neutral``; coefficients are blendshape weights (0 = neutral, 1 = full shape).
* Quads -> two triangles ``(a, b, c), (a, c, d)``; triangles stay.
* Landmarks: the README's 68 vertices, except the brows (points 17-26) and the jaw sides (points 0-5 and 11-16),
  re-selected where photos' annotations put them at the pose photos show faces in
  (:mod:`msma.face_model.landmark_convention`; the README's brows lie 6-11 % of the inter-ocular distance above
  the annotated brows there, its jaw sides 6-15 % of the face size above the annotated jaw). The albedo regions
  and the context head use the README's.

Regions kept (vertex ranges of the upstream README, half-open here):

* **kept vertices** (N = 12995, in upstream order): the full face area ``[0, 9409)`` (face, ears, front of the
  neck), the mouth socket ``[11248, 13294)`` and both sclera meshes ``[21451, 22221)``, ``[23021, 23791)`` (the
  outer eyeball surfaces). Back of the head, gums, tongue, teeth, eye sockets, the inner iris meshes (hidden
  inside the sclera shells, which carry the cornea), lacrimal, blend, occlusion and eyelash meshes are dropped.
* **rendered triangles** (``tri``): the *narrow face area* ``[0, 6706)`` (forehead to chin, cheek to cheek: the
  region Deep3D renders from BFM's front face; ears, neck and the hairline are left out because hair and
  clothing cover them in photos and they carry little identity signal), the front hemispheres of the
  eyeballs (the iris is painted on their cornea cap by the albedo prior) so the eye openings show eyes rather
  than the background, and the mouth socket, so an open mouth shows a dark interior instead of a hole.
  Teeth and tongue are not modelled (their pixels are part of the mouth interior).
* ``uv``: the upstream texture coordinates, one per vertex (at UV seams the first corner's); the face area
  uses the [0, 1] tile, the mouth socket and the eyeballs lie in other UDIM tiles as upstream.
* ``skin_mask`` is 0 on the eyeballs and the mouth interior, soft 0..1 at lips and brows, 1 on other skin.
* ``context`` (:class:`~msma.face_model.context.ContextMesh`, optional, not rendered by the face model): the
  rest of the head for synthetic data: the face area outside the narrow face (ears, temples, front of the
  neck; copies of kept vertices), the back of the head and neck ``[9409, 11248)``, gums and tongue
  ``[14062, 17039)`` and teeth ``[17039, 21451)`` with their own identity/expression bases, a part label per
  vertex and a scalp (hair) weight.
"""

from __future__ import annotations

import json
import re
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msma.face_model.albedo import build_albedo_prior
from msma.face_model.context import PART_GUMS, PART_SKIN, PART_TEETH, ContextMesh
from msma.face_model.landmark_convention import reselect_brows, reselect_jaw
from msma.face_model.model import FaceModelArrays
from msma.face_model.params import CoeffLayout

#: Pinned upstream commit, archive name, checksum and URL.
ICT_COMMIT = "da5f95a607f5e6b37755b38d3385d7f2853732e5"
ICT_ARCHIVE_NAME = f"ICT-FaceKit-{ICT_COMMIT}.zip"
ICT_ARCHIVE_SHA256 = "a3ba2a77ab6fa3d8c6d191f97988a3e4d2ce49a11704bacdcb50882c9d01fa66"
ICT_URL = f"https://github.com/ICT-VGL/ICT-FaceKit/archive/{ICT_COMMIT}.zip"

#: OBJ unit (cm) -> mm.
CM_TO_MM = 10.0
#: Vertex ranges (half-open) of the ICT Face Model Light regions (upstream README tables).
N_VERTICES_ALL = 26719
FACE_AREA = (0, 9409)
NARROW_FACE_AREA = (0, 6706)
MOUTH_SOCKET = (11248, 13294)
#: Sclera meshes: the outer eyeball surfaces (incl. the cornea cap); the separate iris meshes lie inside them.
SCLERA_LEFT = (21451, 22221)
SCLERA_RIGHT = (23021, 23791)
#: Context regions (rendered by the synthetic generator around the face, not by the face model).
HEAD_NECK = (9409, 11248)
GUMS_TONGUE = (14062, 17039)
TEETH = (17039, 21451)
N_IDENTITIES = 100
N_EXPRESSIONS = 53

_MODEL_DIR = "FaceXModel"
_LANDMARK_HEADER = "Multi-PIE 68 point facial landmarks indices"


def ict_layout(n_id: int = N_IDENTITIES, n_exp: int = N_EXPRESSIONS, n_tex: int | None = None) -> CoeffLayout:
    """The ICT coefficient layout: 100 identity modes, 53 expression weights, the albedo prior's modes."""
    from msma.face_model.albedo import ALBEDO_MODE_NAMES

    return CoeffLayout(n_id, n_exp, len(ALBEDO_MODE_NAMES) if n_tex is None else n_tex)


class IctSource:
    """Read access to the ICT-FaceKit files in a zip archive or an extracted folder.

    Args:
        path: the archive ``.zip`` or a directory containing ``FaceXModel/`` (possibly one level down, as
            when the archive was extracted with its top folder).

    Raises:
        FileNotFoundError: when ``path`` does not exist or holds no ``FaceXModel/generic_neutral_mesh.obj``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._zip: zipfile.ZipFile | None = None
        self._prefix = ""
        if self.path.is_file():
            try:
                self._zip = zipfile.ZipFile(self.path)
            except zipfile.BadZipFile as exc:
                raise ValueError(f"{self.path}: not a valid zip archive ({exc})") from exc
            names = [n for n in self._zip.namelist() if n.endswith(f"{_MODEL_DIR}/generic_neutral_mesh.obj")]
            if not names:
                raise FileNotFoundError(f"{self.path}: no {_MODEL_DIR}/generic_neutral_mesh.obj in the archive")
            self._prefix = names[0][: -len(f"{_MODEL_DIR}/generic_neutral_mesh.obj")]
        elif self.path.is_dir():
            candidates = [self.path, *sorted(p for p in self.path.iterdir() if p.is_dir())]
            for root in candidates:
                if (root / _MODEL_DIR / "generic_neutral_mesh.obj").is_file():
                    self._prefix = str(root)
                    break
            else:
                raise FileNotFoundError(f"{self.path}: no {_MODEL_DIR}/generic_neutral_mesh.obj in this folder")
        else:
            raise FileNotFoundError(f"ICT-FaceKit source not found: {self.path}")

    def read(self, relpath: str) -> bytes:
        """Bytes of ``relpath`` (relative to the repository root, e.g. ``FaceXModel/jawOpen.obj``)."""
        if self._zip is not None:
            try:
                return self._zip.read(self._prefix + relpath)
            except KeyError:
                raise FileNotFoundError(f"{self.path}: {relpath} missing from the archive") from None
        p = Path(self._prefix) / relpath
        if not p.is_file():
            raise FileNotFoundError(f"{self.path}: {relpath} missing")
        return p.read_bytes()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> IctSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------ OBJ parsing
def parse_obj_vertices(data: bytes, source: str = "OBJ") -> np.ndarray:
    """All ``v x y z`` lines of an OBJ file as a (V, 3) float64 array (vectorised, no per-line Python floats)."""
    lines = [line[2:] for line in data.split(b"\n") if line.startswith(b"v ")]
    if not lines:
        raise ValueError(f"{source}: no vertices")
    try:
        values = np.array(b" ".join(lines).split(), dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{source}: malformed vertex line ({exc})") from exc
    if values.size != 3 * len(lines):
        raise ValueError(f"{source}: vertex lines must have exactly 3 coordinates")
    return values.reshape(-1, 3)


@dataclass(frozen=True)
class ObjTopology:
    """Triangulated topology of an OBJ file.

    Attributes:
        tri: (T, 3) int64 0-based vertex indices (quads split into (a, b, c), (a, c, d)).
        tri_uv: (T, 3) int64 0-based texture-coordinate indices, -1 where a corner has none.
        polygon: (T,) int64 index of the source polygon of each triangle.
        uv: (U, 2) float64 texture coordinates.
    """

    tri: np.ndarray
    tri_uv: np.ndarray
    polygon: np.ndarray
    uv: np.ndarray


def parse_obj_topology(data: bytes, source: str = "OBJ") -> ObjTopology:
    """Parses ``f`` and ``vt`` lines; polygons with n > 3 corners are fanned into n - 2 triangles."""
    vt_lines = [line[3:] for line in data.split(b"\n") if line.startswith(b"vt ")]
    uv = (
        np.array(b" ".join(vt_lines).split(), dtype=np.float64).reshape(len(vt_lines), -1)[:, :2]
        if vt_lines
        else np.zeros((0, 2))
    )
    tris: list[tuple[int, int, int]] = []
    tuvs: list[tuple[int, int, int]] = []
    polys: list[int] = []
    poly = 0
    for line in data.split(b"\n"):
        if not line.startswith(b"f "):
            continue
        corners = line.split()[1:]
        if len(corners) < 3:
            raise ValueError(f"{source}: face {poly} has fewer than 3 corners")
        vi: list[int] = []
        ti: list[int] = []
        for c in corners:
            parts = c.split(b"/")
            idx = int(parts[0])
            if idx <= 0:
                raise ValueError(f"{source}: non-positive (relative) vertex index {idx} is not supported")
            vi.append(idx - 1)
            ti.append(int(parts[1]) - 1 if len(parts) > 1 and parts[1] else -1)
        for k in range(1, len(vi) - 1):
            tris.append((vi[0], vi[k], vi[k + 1]))
            tuvs.append((ti[0], ti[k], ti[k + 1]))
            polys.append(poly)
        poly += 1
    if not tris:
        raise ValueError(f"{source}: no faces")
    return ObjTopology(
        tri=np.array(tris, dtype=np.int64),
        tri_uv=np.array(tuvs, dtype=np.int64),
        polygon=np.array(polys, dtype=np.int64),
        uv=uv,
    )


def parse_readme_landmarks(readme: str, source: str = "README.md") -> np.ndarray:
    """The 68 Multi-PIE landmark vertex indices (0-based) listed after the README's landmark header."""
    pos = readme.find(_LANDMARK_HEADER)
    if pos < 0:
        raise ValueError(f"{source}: no '{_LANDMARK_HEADER}' section")
    rest = readme[pos + len(_LANDMARK_HEADER) :]
    match = re.search(r"\d+(?:\s*,\s*\d+)+", rest)
    if match is None:
        raise ValueError(f"{source}: no landmark index list after '{_LANDMARK_HEADER}'")
    idx = np.array([int(s) for s in match.group(0).split(",")], dtype=np.int64)
    if idx.shape != (68,):
        raise ValueError(f"{source}: expected 68 landmark indices, found {len(idx)}")
    return idx


# ------------------------------------------------------------------------------------------------- converter
def kept_vertex_indices() -> np.ndarray:
    """Upstream indices of the kept vertices, ascending: full face area, mouth socket, left and right sclera
    (N = 9409 + 2046 + 770 + 770 = 12995)."""
    return np.concatenate([np.arange(*r) for r in (FACE_AREA, MOUTH_SOCKET, SCLERA_LEFT, SCLERA_RIGHT)])


def _select_triangles(tri: np.ndarray, keep: np.ndarray) -> np.ndarray:
    return tri[keep[tri].all(axis=1)]


def convert_ict(
    source: str | Path,
    identities: Sequence[int] | None = None,
    expressions: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
    context: bool = True,
) -> FaceModelArrays:
    """Converts ICT-FaceKit to :class:`FaceModelArrays` (mm, centred, albedo prior attached).

    Args:
        source: the upstream ``.zip`` archive or an extracted folder.
        identities: identity mode numbers to include (default: all 100, in order).
        expressions: expression names to include (default: the 53 of ``vertex_indices.json``, in its order).
        progress: optional callback receiving one short status line per step.
        context: also convert the head around the face (:class:`ContextMesh`, for synthetic data).

    Returns:
        The model arrays (``name="ict"``); a subset gives exactly the matching slices of the full conversion.

    Raises:
        FileNotFoundError / ValueError: naming the file and the problem for missing or malformed input.
    """
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    with IctSource(source) as src:
        meta = json.loads(src.read(f"{_MODEL_DIR}/vertex_indices.json"))
        all_expr = list(meta.get("expressions", []))
        if len(all_expr) != N_EXPRESSIONS:
            raise ValueError(f"{source}: vertex_indices.json lists {len(all_expr)} expressions, expected 53")
        expr = list(all_expr if expressions is None else expressions)
        unknown = [e for e in expr if e not in all_expr]
        if unknown:
            raise ValueError(f"unknown ICT expressions {unknown}; known: {all_expr}")
        ids = list(range(N_IDENTITIES) if identities is None else identities)
        bad_ids = [i for i in ids if not 0 <= int(i) < N_IDENTITIES]
        if bad_ids:
            raise ValueError(f"ICT identity numbers must be in [0, {N_IDENTITIES}), got {bad_ids}")

        landmarks = parse_readme_landmarks(src.read("README.md").decode("utf-8", "replace"), f"{source}:README.md")
        json_lm = np.asarray(meta.get("idx_to_landmark_verts", []), dtype=np.int64)
        if json_lm.shape == (68,) and not np.array_equal(json_lm, landmarks):
            raise ValueError(f"{source}: README landmarks disagree with vertex_indices.json idx_to_landmark_verts")

        neutral_name = f"{_MODEL_DIR}/generic_neutral_mesh.obj"
        neutral_bytes = src.read(neutral_name)
        neutral = parse_obj_vertices(neutral_bytes, neutral_name)
        if neutral.shape[0] != N_VERTICES_ALL:
            raise ValueError(f"{neutral_name}: {neutral.shape[0]} vertices, expected {N_VERTICES_ALL}")
        topo = parse_obj_topology(neutral_bytes, neutral_name)
        say(f"parsed neutral mesh: {neutral.shape[0]} vertices, {len(topo.tri)} triangles")

        kept = kept_vertex_indices()
        n = len(kept)
        keep = np.zeros(N_VERTICES_ALL, dtype=bool)
        keep[kept] = True
        remap = np.full(N_VERTICES_ALL, -1, dtype=np.int64)
        remap[kept] = np.arange(n)

        own = context_own_indices() if context else np.zeros(0, dtype=np.int64)

        def delta(name: str) -> tuple[np.ndarray, np.ndarray]:
            rel = f"{_MODEL_DIR}/{name}.obj"
            verts = parse_obj_vertices(src.read(rel), rel)
            if verts.shape != neutral.shape:
                raise ValueError(f"{rel}: {verts.shape[0]} vertices, expected {N_VERTICES_ALL}")
            return (verts[kept] - neutral[kept]) * CM_TO_MM, (verts[own] - neutral[own]) * CM_TO_MM

        id_basis = np.zeros((n, 3, len(ids)), dtype=np.float32)
        ctx_id = np.zeros((len(own), 3, len(ids)), dtype=np.float32)
        for k, i in enumerate(ids):
            id_basis[:, :, k], ctx_id[:, :, k] = delta(f"identity{int(i):03d}")
        say(f"read {len(ids)} identity modes")
        exp_basis = np.zeros((n, 3, len(expr)), dtype=np.float32)
        ctx_exp = np.zeros((len(own), 3, len(expr)), dtype=np.float32)
        for k, name in enumerate(expr):
            exp_basis[:, :, k], ctx_exp[:, :, k] = delta(name)
        say(f"read {len(expr)} expression shapes")

    # Geometry: centre on the narrow face area, cm -> mm.
    centre = neutral[NARROW_FACE_AREA[0] : NARROW_FACE_AREA[1]].mean(axis=0)
    centre[0] = 0.0
    mean_shape = ((neutral[kept] - centre) * CM_TO_MM).astype(np.float32)

    mesh_tri_up = _select_triangles(topo.tri, keep)
    narrow = np.zeros(N_VERTICES_ALL, dtype=bool)
    narrow[NARROW_FACE_AREA[0] : NARROW_FACE_AREA[1]] = True
    mouth = np.zeros(N_VERTICES_ALL, dtype=bool)
    mouth[MOUTH_SOCKET[0] : MOUTH_SOCKET[1]] = True
    render_parts = [_select_triangles(topo.tri, narrow), _select_triangles(topo.tri, mouth)]
    for lo, hi in (SCLERA_LEFT, SCLERA_RIGHT):
        ball = np.zeros(N_VERTICES_ALL, dtype=bool)
        ball[lo:hi] = True
        ball_tri = _select_triangles(topo.tri, ball)
        ball_centre_z = neutral[lo:hi, 2].mean()
        render_parts.append(ball_tri[neutral[ball_tri, 2].mean(axis=1) > ball_centre_z])
    mesh_tri = remap[mesh_tri_up]
    tri = remap[np.concatenate(render_parts)]

    # Per-vertex UVs: the first texture coordinate seen at each vertex (seams keep one side).
    uv_full = np.full((N_VERTICES_ALL, 2), np.nan)
    corners_v, corners_t = topo.tri.reshape(-1)[::-1], topo.tri_uv.reshape(-1)[::-1]
    has_uv = corners_t >= 0
    uv_full[corners_v[has_uv]] = topo.uv[corners_t[has_uv]]  # reversed order: the first occurrence wins
    uv = uv_full[kept]
    uv = None if np.isnan(uv).any() else uv.astype(np.float32)

    readme_idx = remap[landmarks]
    if (readme_idx < 0).any():
        raise ValueError("ICT landmark vertices fall outside the kept region")
    eyeballs = [remap[np.arange(*SCLERA_LEFT)], remap[np.arange(*SCLERA_RIGHT)]]
    # The albedo regions are placed with the README's landmarks; the model's own jaw sides are re-selected
    # where photos' annotations put them (msma.face_model.landmark_convention).
    prior = build_albedo_prior(mean_shape, mesh_tri, readme_idx, eyeballs, remap[np.arange(*MOUTH_SOCKET)])
    narrow_kept = np.zeros(n, dtype=bool)
    narrow_kept[remap[np.arange(*NARROW_FACE_AREA)]] = True
    brows = reselect_brows(mean_shape, mesh_tri, narrow_kept, readme_idx)
    say(
        f"brows re-selected at {brows.pitch_deg:.1f} deg pitch (mean vertical offset "
        f"{brows.brow_offset_before.mean():+.3f} -> {brows.brow_offset_after.mean():+.3f} inter-ocular distances)"
    )
    jaw = reselect_jaw(mean_shape, mesh_tri, narrow_kept & (prior.skin_mask > 0.5), brows.landmark_idx)
    landmark_idx = jaw.landmark_idx
    say(
        f"jaw sides re-selected at {jaw.pitch_deg:.1f} deg pitch (mean jaw offset "
        f"{jaw.jaw_residual_before.mean():.3f} -> {jaw.jaw_residual_after.mean():.3f} face sizes)"
    )
    say(f"built albedo prior ({len(prior.names)} modes) in {time.perf_counter() - t0:.1f} s total")
    ctx = None
    if context:
        ctx = _context_mesh(topo.tri, neutral, centre, remap, own, ctx_id, ctx_exp, landmarks)
        say(f"context mesh: {ctx.n_vertices} vertices, {len(ctx.tri)} triangles")

    return FaceModelArrays(
        name="ict",
        mean_shape=mean_shape,
        id_basis=id_basis,
        exp_basis=exp_basis,
        albedo_mean=prior.mean,
        albedo_basis=prior.basis,
        tri=tri,
        mesh_tri=mesh_tri,
        landmark_idx=landmark_idx,
        skin_mask=prior.skin_mask,
        id_std=np.ones(len(ids), dtype=np.float32),
        tex_std=prior.std,
        exp_kind="blendshape",
        exp_names=tuple(expr),
        tex_names=prior.names,
        uv=uv,
        context=ctx,
    )


def context_own_indices() -> np.ndarray:
    """Upstream indices of the context mesh's own vertices: back of the head and neck, gums and tongue, teeth."""
    return np.concatenate([np.arange(*r) for r in (HEAD_NECK, GUMS_TONGUE, TEETH)])


def _context_mesh(
    tri_up: np.ndarray,
    neutral: np.ndarray,
    centre: np.ndarray,
    remap: np.ndarray,
    own: np.ndarray,
    id_basis: np.ndarray,
    exp_basis: np.ndarray,
    landmarks: np.ndarray,
) -> ContextMesh:
    """The head around the narrow face (see the module docstring); ``landmarks`` are upstream indices."""
    in_ctx = np.zeros(N_VERTICES_ALL, dtype=bool)
    in_ctx[FACE_AREA[0] : FACE_AREA[1]] = True
    in_ctx[own] = True
    narrow = np.zeros(N_VERTICES_ALL, dtype=bool)
    narrow[NARROW_FACE_AREA[0] : NARROW_FACE_AREA[1]] = True
    # Every triangle of the context regions that the face model does not render (incl. the ones bordering it).
    tri = tri_up[in_ctx[tri_up].all(axis=1) & ~narrow[tri_up].all(axis=1)]
    used = np.unique(tri)
    refs = used[used < FACE_AREA[1]]  # face-area vertices: copies of face-model vertices
    order = np.concatenate([refs, own])
    local = np.full(N_VERTICES_ALL, -1, dtype=np.int64)
    local[order] = np.arange(len(order))
    part = np.full(len(order), PART_SKIN, dtype=np.int64)
    part[len(refs) :][(own >= GUMS_TONGUE[0]) & (own < GUMS_TONGUE[1])] = PART_GUMS
    part[len(refs) :][(own >= TEETH[0]) & (own < TEETH[1])] = PART_TEETH
    # Scalp weight on the neutral head (mm, centred): above a hairline that runs from above the brows at the
    # front down to the nape at the back; face-area copies (temples, ears) only well above the brows.
    pos = (neutral[order] - centre) * CM_TO_MM
    lm = (neutral[landmarks] - centre) * CM_TO_MM
    brow_y = float(lm[17:27, 1].max())
    nose_y, front_z = float(lm[30, 1]), float(lm[30, 2])
    back_z = float(pos[:, 2].min())
    t = np.clip((front_z - 40.0 - pos[:, 2]) / max(front_z - 40.0 - back_z, 1.0), 0.0, 1.0)  # 0 front .. 1 back
    hairline = (brow_y + 20.0) * (1.0 - t) + (nose_y - 25.0) * t
    hairline = np.where(np.arange(len(order)) < len(refs), brow_y + 15.0, hairline)
    hair = 1.0 / (1.0 + np.exp(-(pos[:, 1] - hairline) / 4.0))
    hair[part != PART_SKIN] = 0.0
    return ContextMesh(
        face_ref=remap[refs],
        mean_shape=((neutral[own] - centre) * CM_TO_MM).astype(np.float32),
        id_basis=id_basis,
        exp_basis=exp_basis,
        tri=local[tri],
        part=part,
        hair=hair.astype(np.float32),
    )
