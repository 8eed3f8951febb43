"""3DDFA's annotation files (300W-LP / AFLW2000-3D ``.mat``): parameters, 68 landmarks and pose conversion.

**3DDFA parameters are not Deep3D's.** 300W-LP / AFLW2000-3D store 3DDFA's fit (Zhu et al. 2016):
``Shape_Para`` (199,) weights the full BFM 2009 shape PCA (all 53,490 vertices; the basis there is scaled by
the eigenvalues in 3DDFA's own convention), ``Exp_Para`` (29,) weights 3DDFA's expression PCA built from
FaceWarehouse. Deep3D's model uses the first 80 BFM identity components on its 35,709-vertex front crop and a
64-component expression basis (Guo et al. 2018, also from FaceWarehouse but a different PCA). Identity
could be mapped by keeping the first 80 components with the eigenvalue rescaling; expressions can only be
mapped by a least-squares fit between the two bases' vertex offsets, which needs both bases (the user's BFM
files). So this module exposes the raw parameters (:class:`ThreeDDFAParams`), and the datasets of
:mod:`msma.data.datasets` fill ``FaceSample.params`` only through a ``param_mapper``: :class:`PoseParamMapper`
maps the pose, which carries over into any face model (:func:`threeddfa_angles`); identity / expression need a
user-supplied mapper.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from msma.data.annotation import check_points
from msma.face_model.params import CoeffLayout
from msma.utils.matlab import numeric_field


@dataclass(frozen=True)
class ThreeDDFAParams:
    """3DDFA's fitted parameters of one image (300W-LP / AFLW2000-3D ``.mat``), as stored.

    Attributes:
        pose: (7,) ``Pose_Para``: pitch, yaw, roll (radians), tx, ty, tz, scale.
        shape: (199,) ``Shape_Para`` (BFM 2009 shape PCA weights, 3DDFA convention).
        exp: (29,) ``Exp_Para`` (3DDFA's FaceWarehouse expression PCA weights).
        tex: (199,) ``Tex_Para`` or None.
    """

    pose: np.ndarray
    shape: np.ndarray
    exp: np.ndarray
    tex: np.ndarray | None = None

    @property
    def yaw_degrees(self) -> float:
        return float(np.degrees(self.pose[1]))


@dataclass(frozen=True)
class MatRecord:
    """One annotated image.

    Attributes:
        image: the ``.jpg``.
        landmarks: (68, 2) float32 ground-truth 2D landmarks, original-image pixels (``pt3d_68[:2].T`` for
            AFLW2000-3D; for 300W-LP ``pts_3d`` of its ``landmarks/`` files where present, else ``pt2d.T``).
        landmarks_3d: (68, 3) float32 ``pt3d_68.T`` (AFLW2000-3D) or None.
        params: 3DDFA parameters.
        landmark_source: where ``landmarks`` came from: ``"pt3d_68"``, ``"pt2d"`` (2D contour convention) or
            ``"pts_3d"`` (300W-LP's 3D-convention landmarks file, see :func:`read_300wlp_landmarks`).
    """

    image: Path
    landmarks: np.ndarray
    landmarks_3d: np.ndarray | None
    params: ThreeDDFAParams
    landmark_source: str = "pt2d"

    @property
    def yaw(self) -> float:
        """Ground-truth yaw in degrees (``Pose_Para[1]``)."""
        return self.params.yaw_degrees


def _vector(mat: dict[str, np.ndarray], key: str, size: int, path: Path, required: bool = True) -> np.ndarray | None:
    if key not in mat:
        if required:
            raise ValueError(f"{path}: missing {key}")
        return None
    arr = numeric_field(mat, key, path, np.float64).reshape(-1)
    if arr.size != size or not np.isfinite(arr).all():
        raise ValueError(f"{path}: {key} has {arr.size} values (need {size} finite)")
    return arr


def read_3ddfa_mat(image: Path, mat_path: Path) -> MatRecord:
    """Reads an AFLW2000-3D / 300W-LP annotation with ``scipy.io.loadmat`` (no pickle).

    Raises:
        ValueError: unreadable file or missing/malformed fields, the landmarks included
            (:func:`~msma.data.annotation.check_points`; the message names the file and field).
    """
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(mat_path))
    except Exception as exc:
        raise ValueError(f"{mat_path}: unreadable .mat file ({exc})") from exc
    lm3d = None
    if "pt3d_68" in mat:
        pt3d = numeric_field(mat, "pt3d_68", mat_path, np.float32)
        if pt3d.shape != (3, 68):
            raise ValueError(f"{mat_path}: pt3d_68 has shape {pt3d.shape}, expected (3, 68)")
        lm3d = check_points(np.ascontiguousarray(pt3d.T), mat_path, "pt3d_68")
        lm2d = np.ascontiguousarray(lm3d[:, :2])
        source = "pt3d_68"
    elif "pt2d" in mat:
        pt2d = numeric_field(mat, "pt2d", mat_path, np.float32)
        if pt2d.shape != (2, 68):
            raise ValueError(f"{mat_path}: pt2d has shape {pt2d.shape}, expected (2, 68)")
        lm2d = check_points(np.ascontiguousarray(pt2d.T), mat_path, "pt2d")
        source = "pt2d"
    else:
        raise ValueError(f"{mat_path}: no 68-point landmarks (pt3d_68 or pt2d)")
    pose = _vector(mat, "Pose_Para", 7, mat_path)
    shape = _vector(mat, "Shape_Para", 199, mat_path)
    exp = _vector(mat, "Exp_Para", 29, mat_path)
    tex = _vector(mat, "Tex_Para", 199, mat_path, required=False)
    assert pose is not None and shape is not None and exp is not None
    return MatRecord(image, lm2d, lm3d, ThreeDDFAParams(pose=pose, shape=shape, exp=exp, tex=tex), source)


#: Key of the 3D-convention landmarks in 300W-LP's ``landmarks/<SUBSET>/<name>_pts.mat`` files.
W300LP_LANDMARKS_KEY = "pts_3d"


def read_300wlp_landmarks(path: Path) -> np.ndarray:
    """The 68 3D-convention landmarks of a 300W-LP ``landmarks/<SUBSET>/<name>_pts.mat`` file.

    The 300W-LP distribution ships, beside the image folders, ``landmarks/{AFW,HELEN,IBUG,LFPW}/<name>_pts.mat``
    (no ``_Flip`` subsets) with two (68, 2) arrays in original-image pixels: ``pts_2d``, the 2D convention (jaw
    points on the visible contour, as ``pt2d`` of the image's own ``.mat``), and ``pts_3d``, the 2D projection of
    the 68 3D landmarks of 3DDFA's fitted face (jaw points where the 3D jaw vertices project, hidden side
    included) - the convention of the face model's landmark vertices. Layout as read by public loaders:
    Chenxu-nmsu/Face_AI_Application ``02_face_landmarks/read_300wlp_data.py`` (``loadmat(".../300W_LP/landmarks/
    AFW/AFW_134212_1_0_pts.mat")["pts_2d"]``, 68 rows of x, y drawn on ``300W_LP/AFW/AFW_134212_1_0.jpg``) and the
    ``W300LP`` loaders derived from hzh8311/pyhowfar (``main_pts['pts_2d'] if pointType == '2D' else
    main_pts['pts_3d']``, indexed ``pts[i, 0]`` for i < 68); a head-pose loader reads ``pts_3d`` of
    ``landmarks/<SUBSET without _Flip>/`` and mirrors it for the ``_Flip`` images.

    Args:
        path: the ``_pts.mat`` file.

    Returns:
        (68, 2) float32 x, y, original-image pixels (the convention of ``pt2d``: no offset applied).

    Raises:
        ValueError: unreadable file, no ``pts_3d``, wrong shape, or points that are not a face's
            (:func:`~msma.data.annotation.check_points`; the message names the file).
    """
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:
        raise ValueError(f"{path}: unreadable 300W-LP landmarks file ({exc})") from exc
    if W300LP_LANDMARKS_KEY not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{path}: no {W300LP_LANDMARKS_KEY} in the 300W-LP landmarks file (keys: {keys})")
    pts = numeric_field(mat, W300LP_LANDMARKS_KEY, path, np.float32)
    if pts.shape != (68, 2):
        raise ValueError(f"{path}: {W300LP_LANDMARKS_KEY} has shape {pts.shape}, expected (68, 2)")
    return check_points(np.ascontiguousarray(pts), path, W300LP_LANDMARKS_KEY)


def w300lp_landmarks_file(root: Path, image: Path, landmarks_dir: Path) -> tuple[Path, bool]:
    """Where the 3D-convention landmarks of a 300W-LP image are: (file, mirrored?).

    ``<root>/<SUBSET>/<name>.jpg`` -> ``<landmarks_dir>/<SUBSET>/<name>_pts.mat``. For a ``<SUBSET>_Flip`` image
    without a file of its own under ``<landmarks_dir>/<SUBSET>_Flip/`` (the distribution has none), the file of
    the unflipped twin ``<landmarks_dir>/<SUBSET>/<name>_pts.mat`` is returned with ``mirrored=True``: its
    points must be mirrored (:func:`~msma.data.landmark_index.flip_landmarks`) to describe the flipped image.
    """
    rel = image.relative_to(root)
    name = f"{image.stem}_pts.mat"
    direct = landmarks_dir / rel.parent / name
    subset = rel.parent.name
    if direct.is_file() or not subset.endswith("_Flip"):
        return direct, False
    return landmarks_dir / rel.parent.parent / subset[: -len("_Flip")] / name, True


ParamMapper = Callable[[ThreeDDFAParams], "torch.Tensor | None"]


def threeddfa_rotation(pose: np.ndarray) -> np.ndarray:
    """(3, 3) rotation of 3DDFA's ``Pose_Para`` (pitch, yaw, roll in radians) in the training model's frame.

    3DDFA's rotation (300W-LP / AFLW2000-3D) is the transpose of Deep3D's ``Rz(roll) Ry(yaw) Rx(pitch)`` with the
    same three numbers, in the same y-up model frame (image y = -y). Checked on the real files under
    ``../shared/testdata`` (``tests/unit/test_data_sources.py``): the mean face rotated this way matches their
    68 landmarks up to scale and shift at 3-6 % NME, the untransposed matrix at 7-27 %.
    """
    from msma.face_model.rotation import euler_to_matrix

    angles = torch.as_tensor(np.asarray(pose[:3], dtype=np.float64))[None]
    return euler_to_matrix(angles)[0].T.numpy()


def threeddfa_angles(pose: np.ndarray) -> np.ndarray:
    """(3,) pitch, yaw, roll (radians) of the training model (``R = Rz Ry Rx``) for 3DDFA's ``Pose_Para``.

    The crops are aligned by scale and translation only (Deep3D's alignment has no in-plane rotation), so these
    angles describe the aligned crop exactly (up to perspective: 3DDFA's camera is weak-perspective).
    """
    from msma.face_model.rotation import matrix_to_euler

    r = torch.as_tensor(threeddfa_rotation(pose))[None]
    return matrix_to_euler(r)[0].numpy()


class PoseParamMapper:
    """3DDFA parameters -> flat coefficients with the pose (``angles``) only: what carries over into any face
    model without its basis (identity / expression / translation need a model-specific mapping, docs/data.md).

    Args:
        layout: the training face model's coefficient layout.

    Attributes:
        groups: the coefficient groups the mapped vector holds (``FaceSample.param_groups``).
    """

    groups: tuple[str, ...] = ("angles",)

    def __init__(self, layout: CoeffLayout) -> None:
        self.layout = layout

    def __call__(self, params: ThreeDDFAParams) -> torch.Tensor:
        flat = torch.zeros(self.layout.total, dtype=torch.float32)
        flat[self.layout.slices["angles"]] = torch.from_numpy(threeddfa_angles(params.pose).astype(np.float32))
        return flat
