"""Annotation files that are not a face's: every ground-truth reader raises a ValueError naming the file and the
field (never a TypeError, never a degenerate box that a metric divides by), and the datasets skip the photo."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io

from msma.data.annotation import MAX_COORDINATE_PX, check_points
from msma.data.landmarks import LandmarkError, read_pts, sibling_annotation
from msma.data.mat_datasets import AFLW2000Dataset
from msma.data.threeddfa import read_3ddfa_mat, read_300wlp_landmarks
from msma.utils.matlab import numeric_field


def _face_points(n: int = 68) -> np.ndarray:
    """(n, 2) points on an ellipse around (200, 220): a plausible annotation."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([200 + 80 * np.cos(t), 220 + 100 * np.sin(t)], axis=1)


#: MATLAB values that are not real numeric arrays, by the type name the message must give.
NOT_NUMERIC: dict[str, Any] = {
    "struct": {"a": 1.0, "b": np.zeros(3)},
    "cell": np.array([[np.zeros(3), "a"]], dtype=object),
    "char": "hello",
    "complex": np.zeros((3, 68)) + 1j,
}


@pytest.mark.parametrize("kind", sorted(NOT_NUMERIC))
def test_numeric_field_rejects_what_is_not_a_real_array(tmp_path: Path, kind: str) -> None:
    scipy.io.savemat(str(tmp_path / "x.mat"), {"pt3d_68": NOT_NUMERIC[kind]})
    mat = scipy.io.loadmat(str(tmp_path / "x.mat"))
    with pytest.raises(ValueError, match=rf"x\.mat: pt3d_68 is not a real numeric array \(MATLAB type {kind}\)"):
        numeric_field(mat, "pt3d_68", tmp_path / "x.mat", np.float32)
    with pytest.raises(ValueError, match=r"x\.mat: missing Pose_Para"):
        numeric_field(mat, "Pose_Para", tmp_path / "x.mat", np.float64)
    ok = numeric_field({"k": np.arange(6, dtype=np.int16).reshape(2, 3)}, "k", tmp_path / "x.mat", np.float32)
    assert ok.dtype == np.float32 and ok.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_check_points() -> None:
    path = Path("ann.pts")
    pts = _face_points()
    assert check_points(pts, path) is pts
    three_d = np.concatenate([pts, np.full((68, 1), -1e4)], axis=1)  # z is free, only x, y span the box
    assert check_points(three_d, path, "pt3d_68") is three_d
    bad = pts.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match=r"ann\.pts: 1 of the 68 points are not finite"):
        check_points(bad, path)
    far = pts.copy()
    far[0, 1] = 2 * MAX_COORDINATE_PX
    with pytest.raises(ValueError, match=r"ann\.pts: pts: a coordinate of 2e\+05 px"):
        check_points(far, path, "pts")
    flat = pts.copy()
    flat[:, 1] = 7.0  # every point on one row: no height, sqrt(w * h) = 0
    with pytest.raises(ValueError, match=r"ann\.pts: the points span 160 x 0 px"):
        check_points(flat, path)
    with pytest.raises(ValueError, match=r"shape \(68,\)"):
        check_points(pts[:, 0], path)


def _aflw_mat(**fields: Any) -> dict[str, Any]:
    mat: dict[str, Any] = {
        "pt3d_68": np.concatenate([_face_points().T, np.zeros((1, 68))]),
        "Pose_Para": np.zeros((1, 7)),
        "Shape_Para": np.zeros((199, 1)),
        "Exp_Para": np.zeros((29, 1)),
    }
    for k, v in fields.items():
        mat[k] = v
    return mat


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"pt3d_68": NOT_NUMERIC["struct"]}, "pt3d_68 is not a real numeric array (MATLAB type struct)"),
        ({"Pose_Para": NOT_NUMERIC["cell"]}, "Pose_Para is not a real numeric array (MATLAB type cell)"),
        ({"pt3d_68": np.full((3, 68), 1e30)}, "pt3d_68: a coordinate of 1e+30 px"),
        ({"pt3d_68": np.ones((3, 68))}, "pt3d_68: the points span 0 x 0 px"),
        ({"pt3d_68": np.zeros((3, 10))}, "pt3d_68 has shape (3, 10), expected (3, 68)"),
    ],
)
def test_read_3ddfa_mat_rejects_with_file_and_field(tmp_path: Path, fields: dict[str, Any], message: str) -> None:
    scipy.io.savemat(str(tmp_path / "image1.mat"), _aflw_mat(**fields))
    with pytest.raises(ValueError) as info:
        read_3ddfa_mat(tmp_path / "image1.jpg", tmp_path / "image1.mat")
    assert str(info.value).startswith(f"{tmp_path / 'image1.mat'}: {message}")


def test_read_3ddfa_mat_accepts_a_plausible_file(tmp_path: Path) -> None:
    scipy.io.savemat(str(tmp_path / "image1.mat"), _aflw_mat())
    rec = read_3ddfa_mat(tmp_path / "image1.jpg", tmp_path / "image1.mat")
    np.testing.assert_allclose(rec.landmarks, _face_points(), atol=1e-4)
    assert rec.landmarks_3d is not None and rec.landmarks_3d.shape == (68, 3)


def test_read_300wlp_landmarks_rejects_struct_and_degenerate(tmp_path: Path) -> None:
    scipy.io.savemat(str(tmp_path / "a_pts.mat"), {"pts_3d": NOT_NUMERIC["struct"]})
    with pytest.raises(ValueError, match=r"a_pts\.mat: pts_3d is not a real numeric array \(MATLAB type struct\)"):
        read_300wlp_landmarks(tmp_path / "a_pts.mat")
    scipy.io.savemat(str(tmp_path / "b_pts.mat"), {"pts_3d": np.zeros((68, 2))})
    with pytest.raises(ValueError, match=r"b_pts\.mat: pts_3d: the points span 0 x 0 px"):
        read_300wlp_landmarks(tmp_path / "b_pts.mat")


def _write_pts(path: Path, pts: np.ndarray, header: str = "n_points: 68") -> None:
    body = "\n".join(f"{x + 1:.3f} {y + 1:.3f}" for x, y in pts)
    path.write_text(f"version: 1\n{header}\n{{\n{body}\n}}\n")


def test_sibling_annotation_rejects_implausible_pts(tmp_path: Path) -> None:
    photo = tmp_path / "p.jpg"
    _write_pts(tmp_path / "p.pts", _face_points())
    np.testing.assert_allclose(sibling_annotation(photo), _face_points(), atol=1e-3)
    _write_pts(tmp_path / "p.pts", np.full((68, 2), 1e30))
    with pytest.raises(LandmarkError, match=r"p\.pts: a coordinate of 1e\+30 px"):
        sibling_annotation(photo)
    _write_pts(tmp_path / "p.pts", np.tile([[10.0, 20.0]], (68, 1)))
    with pytest.raises(LandmarkError, match=r"p\.pts: the points span 0 x 0 px"):
        sibling_annotation(photo)
    _write_pts(tmp_path / "p.pts", _face_points(), header="n_points: sixty-eight")
    with pytest.raises(ValueError, match=r"p\.pts: bad n_points line 'n_points: sixty-eight'"):
        read_pts(tmp_path / "p.pts")
    (tmp_path / "p.pts").unlink()
    scipy.io.savemat(str(tmp_path / "p.mat"), {"pt3d_68": NOT_NUMERIC["cell"]})
    with pytest.raises(LandmarkError, match=r"p\.mat: pt3d_68 is not a real numeric array \(MATLAB type cell\)"):
        sibling_annotation(photo)


def test_aflw2000_dataset_skips_implausible_annotations(tmp_path: Path, testdata: Path) -> None:
    """A struct field used to escape as a TypeError and end the evaluation; a 1e30 annotation used to leave the
    metric's count without a record (its NME is not finite)."""
    clean = testdata / "aflw2000_3d"
    for f in clean.iterdir():
        shutil.copy(f, tmp_path / f.name)
    good = {k: v for k, v in scipy.io.loadmat(str(clean / "image00050.mat")).items() if not k.startswith("__")}
    cases = {"image90001": {"pt3d_68": NOT_NUMERIC["struct"]}, "image90002": {"pt3d_68": np.full((3, 68), 1e30)}}
    for name, fields in cases.items():
        shutil.copy(clean / "image00050.jpg", tmp_path / f"{name}.jpg")
        scipy.io.savemat(str(tmp_path / f"{name}.mat"), {**good, **fields})
    ds = AFLW2000Dataset(tmp_path, crop="gt_box", image_size=64)
    assert [r.image.name for r in ds.records] == ["image00050.jpg", "image00251.jpg"]
    reasons = {s.path.name: (s.reason, s.detail) for s in ds.skipped}
    assert reasons["image90001.jpg"][0] == "bad_annotation" and "MATLAB type struct" in reasons["image90001.jpg"][1]
    assert reasons["image90002.jpg"][0] == "bad_annotation" and "1e+30 px" in reasons["image90002.jpg"][1]
    assert ds.skip_counts["bad_annotation"] == 2
