"""The linear 3D morphable face model as an ``nn.Module``: coefficients -> posed, lit, projected mesh.

Units and frames (see ``docs/ARCHITECTURE.md``): vertices in **millimetres** in the model frame (x to the viewer's
right = the subject's left, y up, z towards the camera), the mean face centred at the origin, the camera on +z at
1000 mm (:class:`~msma.face_model.camera.PerspectiveCamera`). The pipeline is Deep3DFaceRecon_pytorch's
(``models/bfm.py`` ``compute_for_render``):

1. ``shape = mean_shape + id_basis @ id + exp_basis @ exp`` (canonical, unposed),
2. ``vertices = R(angles) @ shape + trans`` with ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)``,
3. vertex normals of the canonical shape (sum of unit face normals, normalised), rotated by ``R``,
4. ``albedo = albedo_mean + albedo_basis @ tex``; ``color = SH-irradiance(normals) * albedo`` (Deep3D's SH),
5. landmarks = posed vertices at ``landmark_idx``; 2D landmarks and clip coordinates from the camera.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from msma.face_model.camera import PerspectiveCamera
from msma.face_model.context import ContextMesh, validate_context
from msma.face_model.normals import MeshNormals
from msma.face_model.output import FaceOutput
from msma.face_model.params import CoeffLayout, FaceParams
from msma.face_model.rotation import euler_to_matrix, rotate
from msma.face_model.shading import sh_shade

#: Version of the ``.npz`` layout written by :meth:`FaceModel.save` / :func:`save_arrays` (2: optional
#: ``context_*`` arrays of a :class:`~msma.face_model.context.ContextMesh`; version-1 files still load).
NPZ_FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
_CONTEXT_KEYS = ("face_ref", "mean_shape", "id_basis", "exp_basis", "tri", "part", "hair")
#: Expression coefficient semantics: blendshape weights in [0, 1] (ICT, ARKit names) or PCA ~N(0, 1) (BFM).
EXP_KINDS = ("blendshape", "pca")
#: The domain of a blendshape weight (``exp_kind == "blendshape"``): 0 = the neutral face, 1 = the scanned shape.
BLENDSHAPE_RANGE: tuple[float, float] = (0.0, 1.0)


@dataclass(frozen=True)
class FaceModelArrays:
    """Everything that defines a face model, as numpy arrays (what converters produce and the cache stores).

    Attributes:
        name: model name, e.g. ``"ict"`` or ``"bfm"``.
        mean_shape: (N, 3) float32 mean shape in mm, model frame, centred at the origin.
        id_basis: (N, 3, n_id) float32 identity basis in mm per unit coefficient.
        exp_basis: (N, 3, n_exp) float32 expression basis in mm per unit coefficient.
        albedo_mean: (N, 3) float32 mean albedo, RGB in [0, 1].
        albedo_basis: (N, 3, n_tex) float32 albedo basis per unit coefficient.
        tri: (F, 3) int64 triangles to render (counter-clockwise seen from outside).
        mesh_tri: (G, 3) int64 all triangles of the kept vertices (normals, export); contains ``tri``.
        landmark_idx: (68,) int64 vertex indices of the 68 iBUG/Multi-PIE landmarks, in that order.
        skin_mask: (N,) float32 in [0, 1]: skin weight (albedo regularisation, skin-only losses).
        id_std: (n_id,) float32 prior std of the identity coefficients (1 where the basis is pre-scaled).
        tex_std: (n_tex,) float32 prior std of the albedo coefficients.
        exp_kind: ``"blendshape"`` (weights nominally in [0, 1]) or ``"pca"`` (coefficients ~N(0, 1)).
        exp_names: names of the expression coefficients (n_exp entries; may be generic for PCA).
        tex_names: names of the albedo coefficients (n_tex entries).
        uv: (N, 2) float32 texture coordinates in [0, 1] (OBJ convention, v up), or None.
        context: the head around the rendered face (synthetic data only; not rendered by the model), or None.
    """

    name: str
    mean_shape: np.ndarray
    id_basis: np.ndarray
    exp_basis: np.ndarray
    albedo_mean: np.ndarray
    albedo_basis: np.ndarray
    tri: np.ndarray
    mesh_tri: np.ndarray
    landmark_idx: np.ndarray
    skin_mask: np.ndarray
    id_std: np.ndarray
    tex_std: np.ndarray
    exp_kind: str
    exp_names: tuple[str, ...]
    tex_names: tuple[str, ...]
    uv: np.ndarray | None = field(default=None)
    context: ContextMesh | None = field(default=None)

    def __post_init__(self) -> None:
        validate_arrays(self)

    @property
    def n_vertices(self) -> int:
        return int(self.mean_shape.shape[0])

    @property
    def layout(self) -> CoeffLayout:
        return CoeffLayout(int(self.id_basis.shape[2]), int(self.exp_basis.shape[2]), int(self.albedo_basis.shape[2]))


def validate_arrays(a: FaceModelArrays, source: str = "face model") -> None:
    """Checks the shapes, dtypes and index ranges of a :class:`FaceModelArrays`; raises ``ValueError``."""

    def bad(msg: str) -> ValueError:
        return ValueError(f"{source}: {msg}")

    if a.mean_shape.ndim != 2 or a.mean_shape.shape[1] != 3:
        raise bad(f"mean_shape must be (N, 3), got {a.mean_shape.shape}")
    n = a.mean_shape.shape[0]
    for key in ("id_basis", "exp_basis", "albedo_basis"):
        arr = getattr(a, key)
        if arr.ndim != 3 or arr.shape[:2] != (n, 3):
            raise bad(f"{key} must be (N={n}, 3, K), got {arr.shape}")
    if a.albedo_mean.shape != (n, 3):
        raise bad(f"albedo_mean must be ({n}, 3), got {a.albedo_mean.shape}")
    for key in ("tri", "mesh_tri"):
        arr = getattr(a, key)
        if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] == 0:
            raise bad(f"{key} must be a non-empty (F, 3) array, got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            raise bad(f"{key} must be integer, got {arr.dtype}")
        if arr.min() < 0 or arr.max() >= n:
            raise bad(f"{key} indices must be in [0, {n}), got [{arr.min()}, {arr.max()}]")
    if a.landmark_idx.shape != (68,) or a.landmark_idx.min() < 0 or a.landmark_idx.max() >= n:
        raise bad(f"landmark_idx must be 68 vertex indices in [0, {n}), got shape {a.landmark_idx.shape}")
    if a.skin_mask.shape != (n,):
        raise bad(f"skin_mask must be ({n},), got {a.skin_mask.shape}")
    if a.id_std.shape != (a.id_basis.shape[2],) or a.tex_std.shape != (a.albedo_basis.shape[2],):
        raise bad(f"id_std {a.id_std.shape} / tex_std {a.tex_std.shape} do not match the bases")
    if a.exp_kind not in EXP_KINDS:
        raise bad(f"exp_kind must be one of {EXP_KINDS}, got {a.exp_kind!r}")
    if len(a.exp_names) != a.exp_basis.shape[2] or len(a.tex_names) != a.albedo_basis.shape[2]:
        raise bad("exp_names / tex_names must name every expression / albedo coefficient")
    if a.uv is not None and a.uv.shape != (n, 2):
        raise bad(f"uv must be ({n}, 2) or absent, got {a.uv.shape}")
    for key in ("mean_shape", "id_basis", "exp_basis", "albedo_mean", "albedo_basis"):
        if not np.all(np.isfinite(getattr(a, key))):
            raise bad(f"{key} contains non-finite values")
    if a.context is not None:
        validate_context(a.context, n_face=n, source=f"{source} context mesh")
        if a.context.id_basis.shape[2] != a.id_basis.shape[2] or a.context.exp_basis.shape[2] != a.exp_basis.shape[2]:
            raise bad("context mesh bases must have the face model's n_id / n_exp coefficients")


_ARRAY_KEYS = (
    "mean_shape",
    "id_basis",
    "exp_basis",
    "albedo_mean",
    "albedo_basis",
    "tri",
    "mesh_tri",
    "landmark_idx",
    "skin_mask",
    "id_std",
    "tex_std",
)
_FLOAT_KEYS = {"mean_shape", "id_basis", "exp_basis", "albedo_mean", "albedo_basis", "skin_mask", "id_std", "tex_std"}


def save_arrays(arrays: FaceModelArrays, path: str | os.PathLike[str]) -> None:
    """Writes ``arrays`` to an uncompressed ``.npz`` (no pickled objects; strings as unicode arrays).

    The file is written to ``path`` directly; callers that need atomicity write to a temporary name first
    (see :mod:`msma.face_model.assets`).
    """
    payload: dict[str, np.ndarray] = {k: np.ascontiguousarray(getattr(arrays, k)) for k in _ARRAY_KEYS}
    payload["format_version"] = np.array(NPZ_FORMAT_VERSION, dtype=np.int64)
    payload["name"] = np.array(arrays.name)
    payload["exp_kind"] = np.array(arrays.exp_kind)
    payload["exp_names"] = np.array(arrays.exp_names, dtype=np.str_)
    payload["tex_names"] = np.array(arrays.tex_names, dtype=np.str_)
    if arrays.uv is not None:
        payload["uv"] = np.ascontiguousarray(arrays.uv)
    if arrays.context is not None:
        for k in _CONTEXT_KEYS:
            payload[f"context_{k}"] = np.ascontiguousarray(getattr(arrays.context, k))
    with open(path, "wb") as fh:
        np.savez(fh, **payload)  # type: ignore[arg-type]


def load_arrays(path: str | os.PathLike[str]) -> FaceModelArrays:
    """Reads a file written by :func:`save_arrays` (``allow_pickle=False``).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: naming the file when it is not a valid face-model ``.npz``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"face model file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            files = set(data.files)
            missing = [
                k
                for k in (*_ARRAY_KEYS, "format_version", "name", "exp_kind", "exp_names", "tex_names")
                if k not in files
            ]
            if missing:
                raise ValueError(f"{path}: not a msma face-model file, missing keys {missing}")
            version = int(data["format_version"])
            if version not in _READABLE_VERSIONS:
                raise ValueError(f"{path}: face-model format version {version}, expected one of {_READABLE_VERSIONS}")
            arrs = {k: data[k] for k in _ARRAY_KEYS}
            uv = data["uv"].astype(np.float32) if "uv" in files else None
            name = str(data["name"])
            exp_kind = str(data["exp_kind"])
            exp_names = tuple(str(s) for s in data["exp_names"].tolist())
            tex_names = tuple(str(s) for s in data["tex_names"].tolist())
            context = None
            if all(f"context_{k}" in files for k in _CONTEXT_KEYS):
                c = {k: data[f"context_{k}"] for k in _CONTEXT_KEYS}
                context = ContextMesh(
                    face_ref=c["face_ref"].astype(np.int64),
                    mean_shape=c["mean_shape"].astype(np.float32),
                    id_basis=c["id_basis"].astype(np.float32),
                    exp_basis=c["exp_basis"].astype(np.float32),
                    tri=c["tri"].astype(np.int64),
                    part=c["part"].astype(np.int64),
                    hair=c["hair"].astype(np.float32),
                )
    except (OSError, EOFError, KeyError, ValueError) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith(str(path)):
            raise
        raise ValueError(f"{path}: cannot read face-model file ({type(exc).__name__}: {exc})") from exc
    for k in _FLOAT_KEYS:
        arrs[k] = arrs[k].astype(np.float32)
    for k in ("tri", "mesh_tri", "landmark_idx"):
        arrs[k] = arrs[k].astype(np.int64)
    return FaceModelArrays(
        name=name,
        exp_kind=exp_kind,
        exp_names=exp_names,
        tex_names=tex_names,
        uv=uv,
        context=context,
        **arrs,
    )


class FaceModel(nn.Module):
    """Linear 3DMM with Deep3D's pose, SH shading and camera.

    Buffers (float32 unless stated; they follow ``.to(device)``):
        mean_shape (N, 3) mm; id_basis (N, 3, n_id) mm; exp_basis (N, 3, n_exp) mm;
        albedo_mean (N, 3) in [0, 1]; albedo_basis (N, 3, n_tex); tri (F, 3) long: triangles to render;
        mesh_tri (G, 3) long: all triangles (normals, export); landmark_idx (68,) long; skin_mask (N,) in [0, 1];
        id_std (n_id,), tex_std (n_tex,): prior std of the coefficients; uv (N, 2) or None.

    Attributes:
        name: ``"ict"`` or ``"bfm"`` (or a custom name).
        layout: the :class:`CoeffLayout` of this model's flat coefficient vector.
        camera: the :class:`PerspectiveCamera` used by :meth:`forward`.
        exp_kind: ``"blendshape"`` (expression weights nominally in [0, 1]) or ``"pca"`` (~N(0, 1)).
        exp_names / tex_names: names of the expression / albedo coefficients.
        context: the head around the rendered face (numpy, not a buffer: it follows neither ``.to()`` nor
            ``state_dict``; used by the synthetic generator only), or None.
    """

    mean_shape: Tensor
    id_basis: Tensor
    exp_basis: Tensor
    albedo_mean: Tensor
    albedo_basis: Tensor
    tri: Tensor
    mesh_tri: Tensor
    landmark_idx: Tensor
    skin_mask: Tensor
    id_std: Tensor
    tex_std: Tensor
    uv: Tensor | None
    _tri_i32: Tensor

    def __init__(self, arrays: FaceModelArrays, camera: PerspectiveCamera | None = None) -> None:
        super().__init__()
        validate_arrays(arrays, source=f"face model {arrays.name!r}")
        self.name = arrays.name
        self.layout = arrays.layout
        self.camera = camera if camera is not None else PerspectiveCamera()
        self.exp_kind = arrays.exp_kind
        self.exp_names = tuple(arrays.exp_names)
        self.tex_names = tuple(arrays.tex_names)
        self.context: ContextMesh | None = arrays.context
        f32, i64 = torch.float32, torch.int64
        for key in _ARRAY_KEYS:
            dtype = f32 if key in _FLOAT_KEYS else i64
            self.register_buffer(key, torch.as_tensor(np.ascontiguousarray(getattr(arrays, key)), dtype=dtype))
        self.register_buffer("uv", None if arrays.uv is None else torch.as_tensor(arrays.uv, dtype=f32))
        self.register_buffer("_tri_i32", self.tri.to(torch.int32), persistent=False)
        self._normals = MeshNormals(self.mesh_tri, self.n_vertices)

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def n_vertices(self) -> int:
        return int(self.mean_shape.shape[0])

    @property
    def tri_int32(self) -> Tensor:
        """(F, 3) int32 triangles to render, on the model's device (what rasterisers take)."""
        return self._tri_i32

    def fingerprint(self) -> str:
        """A short sha256 over the name, layout, coefficient names and every buffer's bytes.

        Changes whenever the model's content changes (e.g. a new conversion recipe), so caches of data generated
        with the model (synthetic renders, fitted parameters) can key on it. Costs one pass over the buffers.
        """
        import hashlib

        h = hashlib.sha256(f"{self.name}|{self.layout}|{self.exp_kind}|{self.exp_names}|{self.tex_names}".encode())
        for key in (*_ARRAY_KEYS, "uv"):
            t = getattr(self, key)
            if t is not None:
                h.update(key.encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, vertices={self.n_vertices}, render_triangles={int(self.tri.shape[0])}, "
            f"layout={self.layout}"
        )

    # --------------------------------------------------------------------------------------------- components
    def _check(self, name: str, coeffs: Tensor, n: int) -> None:
        if coeffs.ndim != 2 or coeffs.shape[1] != n:
            raise ValueError(f"{self.name} face model: {name} must be (B, {n}), got {tuple(coeffs.shape)}")

    def shape(self, id: Tensor, exp: Tensor) -> Tensor:
        """Canonical (unposed) shape.

        Args:
            id: (B, n_id) identity coefficients.
            exp: (B, n_exp) expression coefficients.

        Returns:
            (B, N, 3) vertices in mm, model frame, ``mean + id_basis @ id + exp_basis @ exp``.
        """
        self._check("id", id, self.layout.n_id)
        self._check("exp", exp, self.layout.n_exp)
        offset = torch.einsum("nck,bk->bnc", self.id_basis, id) + torch.einsum("nck,bk->bnc", self.exp_basis, exp)
        return self.mean_shape + offset

    def in_range(self, params: FaceParams) -> FaceParams:
        """The coefficients with the expression projected onto the model's range.

        Blendshape weights (``exp_kind == "blendshape"``: ICT-FaceKit, ARKit names) are defined on [0, 1]: a
        negative weight or one above 1 extrapolates a shape past what was scanned. A regressor's output is not
        bounded, so it is clamped to [0, 1] here (the fitter keeps the weights there and the synthetic prior
        draws them there). PCA expressions (BFM, ~N(0, 1)) are unbounded and returned unchanged.

        Args:
            params: coefficients sized like :attr:`layout` (B rows).

        Returns:
            :class:`FaceParams`: the same tensors except ``exp`` (B, n_exp), clamped for a blendshape model.
        """
        if self.exp_kind != "blendshape":
            return params
        return params.replace(exp=params.exp.clamp(*BLENDSHAPE_RANGE))

    def albedo(self, tex: Tensor) -> Tensor:
        """Per-vertex albedo ``albedo_mean + albedo_basis @ tex``, (B, N, 3) RGB (nominally [0, 1], not clamped)."""
        self._check("tex", tex, self.layout.n_tex)
        return self.albedo_mean + torch.einsum("nck,bk->bnc", self.albedo_basis, tex)

    def vertex_normals(self, vertices: Tensor) -> Tensor:
        """Unit vertex normals of ``vertices`` (B, N, 3) over :attr:`mesh_tri`: :func:`mesh_vertex_normals`'s
        values, as precomputed sparse products (:class:`~msma.face_model.normals.MeshNormals`)."""
        return self._normals(vertices)

    def rotation(self, angles: Tensor) -> Tensor:
        """(B, 3) pitch, yaw, roll in radians -> (B, 3, 3) ``R = Rz @ Ry @ Rx``."""
        return euler_to_matrix(angles)

    def transform(self, vertices: Tensor, angles: Tensor, trans: Tensor) -> Tensor:
        """Poses canonical vertices: ``R(angles) @ v + trans``; (B, N, 3) mm -> (B, N, 3) mm."""
        return rotate(vertices, euler_to_matrix(angles)) + trans[:, None, :]

    # ---------------------------------------------------------------------------------------------- forward
    def forward(self, params: FaceParams, image_size: int = 224) -> FaceOutput:
        """Coefficients -> posed, lit and projected faces.

        Args:
            params: coefficients sized like :attr:`layout` (B rows).
            image_size: square image size in pixels the projections refer to (focal = 1015 * size / 224).

        Returns:
            :class:`FaceOutput` (vertices and landmarks in mm, model frame; 2D landmarks in pixels, x right,
            y down; clip coordinates for the rasteriser).
        """
        canonical = self.shape(params.id, params.exp)
        rot = euler_to_matrix(params.angles)
        vertices = rotate(canonical, rot) + params.trans[:, None, :]
        normals = rotate(self.vertex_normals(canonical), rot)
        albedo = self.albedo(params.tex)
        color = sh_shade(albedo, normals, params.sh).clamp_min(0.0)
        landmarks_3d = vertices[:, self.landmark_idx]
        return FaceOutput(
            vertices=vertices,
            vertices_canonical=canonical,
            normals=normals,
            albedo=albedo,
            color=color,
            landmarks_3d=landmarks_3d,
            landmarks_2d=self.camera.project(landmarks_3d, image_size),
            clip=self.camera.to_clip(vertices, image_size),
            image_size=image_size,
        )

    # ------------------------------------------------------------------------------------------------ I/O
    def to_arrays(self) -> FaceModelArrays:
        """The model's buffers back as :class:`FaceModelArrays` (CPU numpy copies)."""

        def np_(t: Tensor) -> np.ndarray:
            return t.detach().cpu().numpy().copy()

        return FaceModelArrays(
            name=self.name,
            exp_kind=self.exp_kind,
            exp_names=self.exp_names,
            tex_names=self.tex_names,
            uv=None if self.uv is None else np_(self.uv),
            context=self.context,
            **{k: np_(getattr(self, k)) for k in _ARRAY_KEYS},
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the compact ``.npz`` form of this model (loadable with :meth:`load`)."""
        save_arrays(self.to_arrays(), path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], camera: PerspectiveCamera | None = None) -> FaceModel:
        """Reads a model written by :meth:`save` (``np.load(allow_pickle=False)``)."""
        return cls(load_arrays(path), camera=camera)
