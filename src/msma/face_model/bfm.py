"""BFM09 in Deep3DFaceRecon's format (licence-restricted: never shipped or downloaded; the user supplies it).

Two inputs are understood:

* ``BFM_model_front.mat`` (what Deep3DFaceRecon_pytorch uses, ``models/bfm.py``): ``meanshape`` (1, 3N),
  ``idBase`` (3N, 80), ``exBase`` (3N, 64), ``meantex`` (1, 3N) in 0..255, ``texBase`` (3N, 80) in 0..255 units,
  ``tri`` (F, 3), ``point_buf`` (N, 8), ``keypoints`` (68,), ``frontmask2_idx``, ``tri_mask2``, ``skinmask`` (N,);
  all indices 1-based (MATLAB); lengths in decimetres (BFM09's micrometres / 1e5); N = 35709.
* the files Deep3D converts it from (``util/load_mats.py`` ``transferBFM09``): ``01_MorphableModel.mat``
  (``shapeMU``, ``shapePC``, ``shapeEV``, ``texMU``, ``texPC``, ``texEV``; 53490 vertices, micrometres),
  ``Exp_Pca.bin`` (int32 ``exp_dim``, then float32 mean (3 x 53215) and ``exp_dim`` components of 3 x 53215,
  component-major), ``std_exp.txt`` (``exp_dim`` stds), ``BFM_front_idx.mat`` (``idx``: 1-based indices into the
  53215 expression-model vertices), ``BFM_exp_idx.mat`` (``trimIndex``: 1-based indices of those vertices in
  BFM09's 53490) and ``facemodel_info.mat`` (``tri``, ``point_buf``, ``keypoints``, ``frontmask2_idx``,
  ``tri_mask2``, ``skinmask``). The conversion reproduces Deep3D's: bases scaled by their stds, the first 80
  identity / 64 expression / 80 texture components, vertices selected by ``trimIndex[idx]``.

Conversions to msma's conventions: lengths x100 (dm -> mm), the mean shape recentred on its vertex mean (Deep3D
``recenter=True``), albedo /255, indices 0-based. Coefficients are ~N(0, 1) for all three groups (the bases are
pre-scaled by the PCA standard deviations). The frame (x right, y up, z towards the camera) is already msma's.
"""

from __future__ import annotations

import os
from array import array
from pathlib import Path
from typing import Any

import numpy as np
from scipy.io import loadmat, savemat

from msma.face_model.camera import PerspectiveCamera
from msma.face_model.model import FaceModel, FaceModelArrays, load_arrays, save_arrays
from msma.utils.matlab import numeric_field

FRONT_MAT = "BFM_model_front.mat"
SOURCE_FILES = (
    "01_MorphableModel.mat",
    "Exp_Pca.bin",
    "std_exp.txt",
    "BFM_front_idx.mat",
    "BFM_exp_idx.mat",
    "facemodel_info.mat",
)
#: Deep3D's numbers of components (``util/load_mats.py``).
N_ID, N_EXP, N_TEX = 80, 64, 80
#: Deep3D's length unit (decimetre: BFM09 micrometres / 1e5) -> mm.
DM_TO_MM = 100.0
#: BFM09 native unit (micrometre) -> Deep3D's decimetre.
UM_TO_DM = 1e-5

_FRONT_KEYS = ("meanshape", "idBase", "exBase", "meantex", "texBase", "tri", "point_buf", "keypoints", "skinmask")


def _loadmat(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"BFM file not found: {path}")
    try:
        return loadmat(str(path))
    except NotImplementedError as exc:  # MATLAB v7.3 (HDF5) files
        raise ValueError(f"{path}: MATLAB v7.3 files are not supported; re-save with -v7 ({exc})") from exc
    except Exception as exc:  # scipy's MatReadError (empty, truncated) is not a ValueError
        raise ValueError(f"{path}: cannot read MATLAB file ({type(exc).__name__}: {exc})") from exc


def _get(mat: dict[str, Any], key: str, path: Path, dtype: type[np.floating[Any]] | None = None) -> np.ndarray:
    """``mat[key]`` as a real numeric array (its stored type unless ``dtype``), or a ValueError naming file and key."""
    if key not in mat:
        raise ValueError(f"{path}: missing variable {key!r}")
    return numeric_field(mat, key, path, dtype)


def read_exp_pca(path: Path, n_vertex: int) -> tuple[np.ndarray, np.ndarray]:
    """Reads Guo et al.'s ``Exp_Pca.bin``.

    Args:
        path: the file.
        n_vertex: vertices of the expression model (53215 for the real file).

    Returns:
        ``(mean (3 * n_vertex,), pcs (3 * n_vertex, exp_dim))`` float32, Deep3D's layout.
    """
    if not path.is_file():
        raise FileNotFoundError(f"BFM file not found: {path}")
    raw = path.read_bytes()
    dim = array("i")
    dim.frombytes(raw[:4])
    exp_dim = int(dim[0])
    expected = 4 + 4 * 3 * n_vertex * (1 + exp_dim)
    if exp_dim <= 0 or len(raw) < expected:
        raise ValueError(f"{path}: expected {expected} bytes for {exp_dim} components of {n_vertex} vertices")
    floats = np.frombuffer(raw, dtype="<f4", count=3 * n_vertex * (1 + exp_dim), offset=4)
    mean = floats[: 3 * n_vertex].copy()
    pcs = floats[3 * n_vertex :].reshape(exp_dim, 3 * n_vertex).T.copy()
    return mean, pcs


def convert_bfm09(folder: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Deep3D's ``transferBFM09``: BFM09 + expression basis + info files -> ``BFM_model_front.mat`` content.

    Args:
        folder: directory holding :data:`SOURCE_FILES`.

    Returns:
        A dict with the keys and shapes of ``BFM_model_front.mat`` (indices stay 1-based, lengths in dm).
    """
    folder = Path(folder)
    missing = [f for f in SOURCE_FILES if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: missing BFM source files {missing}")
    bfm_path = folder / "01_MorphableModel.mat"
    bfm = _loadmat(bfm_path)
    shape_pc, shape_ev, shape_mu = (_get(bfm, k, bfm_path) for k in ("shapePC", "shapeEV", "shapeMU"))
    tex_pc, tex_ev, tex_mu = (_get(bfm, k, bfm_path) for k in ("texPC", "texEV", "texMU"))

    trim_path = folder / "BFM_exp_idx.mat"
    trim = _get(_loadmat(trim_path), "trimIndex", trim_path).astype(np.int64).reshape(-1) - 1
    front_path = folder / "BFM_front_idx.mat"
    front = _get(_loadmat(front_path), "idx", front_path).astype(np.int64).reshape(-1) - 1
    n_exp_vertex = len(trim)
    exp_mu, exp_pc = read_exp_pca(folder / "Exp_Pca.bin", n_exp_vertex)
    try:
        exp_ev = np.loadtxt(folder / "std_exp.txt").reshape(-1)
    except ValueError as exc:
        raise ValueError(f"{folder / 'std_exp.txt'}: not a list of numbers ({exc})") from exc
    if exp_ev.shape[0] != exp_pc.shape[1]:
        raise ValueError(f"{folder / 'std_exp.txt'}: {exp_ev.shape[0]} stds for {exp_pc.shape[1]} components")
    n_bfm_vertex = shape_mu.size // 3
    if front.max() >= n_exp_vertex or trim.max() >= n_bfm_vertex:
        raise ValueError(f"{folder}: BFM_front_idx / BFM_exp_idx indices out of range")
    for key, arr, k in (("shapePC", shape_pc, N_ID), ("texPC", tex_pc, N_TEX), ("Exp_Pca.bin", exp_pc, N_EXP)):
        if arr.shape[1] < k:
            raise ValueError(f"{folder}: {key} has {arr.shape[1]} components, Deep3D uses {k}")

    id_base = (shape_pc * shape_ev.reshape(1, -1))[:, :N_ID] * UM_TO_DM
    ex_base = (exp_pc * exp_ev.reshape(1, -1))[:, :N_EXP] * UM_TO_DM
    tex_base = (tex_pc * tex_ev.reshape(1, -1))[:, :N_TEX]
    shape_idx = trim[front]

    def pick(flat: np.ndarray, idx: np.ndarray) -> np.ndarray:
        k = flat.shape[1] if flat.ndim == 2 else 1
        return flat.reshape(-1, 3, k)[idx].reshape(len(idx) * 3, k)

    info_path = folder / "facemodel_info.mat"
    info = _loadmat(info_path)
    out = {
        "meanshape": pick(shape_mu.reshape(-1, 1) * UM_TO_DM, shape_idx).reshape(1, -1),
        "meantex": pick(tex_mu.reshape(-1, 1), shape_idx).reshape(1, -1),
        "idBase": pick(id_base, shape_idx),
        "exBase": pick(ex_base, front),
        "texBase": pick(tex_base, shape_idx),
    }
    for key in ("tri", "point_buf", "tri_mask2", "keypoints", "frontmask2_idx", "skinmask"):
        out[key] = _get(info, key, info_path)
    del exp_mu  # Deep3D ignores the expression mean (it is folded into BFM's mean shape)
    return out


def arrays_from_front(mat: dict[str, Any], source: str = FRONT_MAT) -> FaceModelArrays:
    """``BFM_model_front.mat`` content (as loaded by scipy) -> :class:`FaceModelArrays` in msma's units."""
    src = Path(source)
    for key in _FRONT_KEYS:
        _get(mat, key, src)
    mean = _get(mat, "meanshape", src, np.float64).reshape(-1, 3)
    n = mean.shape[0]

    def basis(key: str) -> np.ndarray:
        b = _get(mat, key, src, np.float64)
        if b.ndim != 2 or b.shape[0] != 3 * n:
            raise ValueError(f"{source}: {key} must be (3N={3 * n}, K), got {b.shape}")
        return b.reshape(n, 3, b.shape[1])

    id_b, ex_b, tex_b = basis("idBase"), basis("exBase"), basis("texBase")
    meantex = _get(mat, "meantex", src, np.float64).reshape(-1)
    if meantex.size != 3 * n:
        raise ValueError(f"{source}: meantex has {meantex.size} values, expected {3 * n}")
    tri = _get(mat, "tri", src).astype(np.int64) - 1
    if tri.ndim != 2 or tri.shape[1] != 3:
        raise ValueError(f"{source}: tri must be (F, 3), got {tri.shape}")
    keypoints = _get(mat, "keypoints", src).astype(np.int64).reshape(-1) - 1
    skin = _get(mat, "skinmask", src, np.float32).reshape(-1)
    if skin.size != n:
        raise ValueError(f"{source}: skinmask has {skin.size} entries, expected {n}")
    mean_mm = (mean - mean.mean(axis=0, keepdims=True)) * DM_TO_MM  # Deep3D recenter=True
    return FaceModelArrays(
        name="bfm",
        mean_shape=mean_mm.astype(np.float32),
        id_basis=(id_b * DM_TO_MM).astype(np.float32),
        exp_basis=(ex_b * DM_TO_MM).astype(np.float32),
        albedo_mean=(meantex.reshape(n, 3) / 255.0).astype(np.float32),
        albedo_basis=(tex_b / 255.0).astype(np.float32),
        tri=tri,
        mesh_tri=tri.copy(),
        landmark_idx=keypoints,
        skin_mask=np.clip(skin, 0.0, 1.0),
        id_std=np.ones(id_b.shape[2], dtype=np.float32),
        tex_std=np.ones(tex_b.shape[2], dtype=np.float32),
        exp_kind="pca",
        exp_names=tuple(f"exp_{k:02d}" for k in range(ex_b.shape[2])),
        tex_names=tuple(f"tex_{k:02d}" for k in range(tex_b.shape[2])),
        uv=None,
    )


def resolve_bfm_path(path: str | os.PathLike[str] | None) -> Path:
    """``path`` or ``$MSMA_BFM_DIR``; raises ``FileNotFoundError`` naming the variable when neither is set."""
    if path is None:
        env = os.environ.get("MSMA_BFM_DIR")
        if not env:
            raise FileNotFoundError(
                "BFM is licence-restricted and not shipped: pass path=<BFM_model_front.mat or folder> or set "
                "MSMA_BFM_DIR to a folder with Deep3D's BFM_model_front.mat (or 01_MorphableModel.mat, "
                "Exp_Pca.bin, std_exp.txt, BFM_front_idx.mat, BFM_exp_idx.mat, facemodel_info.mat)"
            )
        path = env
    return Path(path).expanduser()


def load_bfm_arrays(path: str | os.PathLike[str] | None = None) -> FaceModelArrays:
    """Reads BFM from a ``.npz`` (:meth:`FaceModel.save`), ``BFM_model_front.mat``, or a folder with either
    ``BFM_model_front.mat`` or its Deep3D source files (converted in memory)."""
    p = resolve_bfm_path(path)
    if p.is_dir():
        if (p / FRONT_MAT).is_file():
            p = p / FRONT_MAT
        else:
            return arrays_from_front(convert_bfm09(p), source=str(p))
    if p.suffix == ".npz":
        return load_arrays(p)
    return arrays_from_front(_loadmat(p), source=str(p))


def load_bfm(path: str | os.PathLike[str] | None = None, camera: PerspectiveCamera | None = None) -> FaceModel:
    """BFM09 front face (Deep3D) as a :class:`FaceModel` (layout 80/64/80 for the real files)."""
    return FaceModel(load_bfm_arrays(path), camera=camera)


def write_front_mat(content: dict[str, np.ndarray], path: str | os.PathLike[str]) -> None:
    """Writes ``BFM_model_front.mat`` content (e.g. from :func:`convert_bfm09`) with scipy."""
    savemat(str(path), content)


def save_bfm_npz(path_in: str | os.PathLike[str] | None, path_out: str | os.PathLike[str]) -> None:
    """Converts the user's BFM files to the compact ``.npz`` form."""
    save_arrays(load_bfm_arrays(path_in), path_out)
