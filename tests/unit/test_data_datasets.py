"""Real-photo datasets: AFLW2000-3D, 300W-LP, folders of photos (with bad files)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from msma.data.align import apply_affine, template_positions
from msma.data.batch import collate_samples
from msma.data.datasets import (
    AFLW2000Dataset,
    FolderDataset,
    ThreeDDFAParams,
    W300LPDataset,
    read_3ddfa_mat,
    stable_split,
)
from msma.data.landmark_index import five_points_np
from msma.data.landmarks import read_pts


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    import skimage.data

    return skimage.data.astronaut()


# ------------------------------------------------------------------------------------------ AFLW2000-3D
def test_aflw_gt_box(testdata: Path) -> None:
    root = testdata / "aflw2000_3d"
    ds = AFLW2000Dataset(root)
    assert len(ds) == 2 and ds.skipped == []
    np.testing.assert_allclose(ds.yaws, [0.939, -54.685], atol=1e-3)
    for i in range(2):
        sample = ds[i]
        mat = scipy.io.loadmat(str(ds.records[i].image.with_suffix(".mat")))
        pt3d = mat["pt3d_68"].astype(np.float32)
        assert sample.image.shape == (3, 224, 224) and sample.image.dtype == torch.float32
        assert 0.0 <= float(sample.image.min()) and float(sample.image.max()) <= 1.0
        assert sample.landmarks_3d is not None
        np.testing.assert_allclose(sample.landmarks_3d.numpy(), pt3d.T)
        assert sample.yaw == pytest.approx(math.degrees(float(mat["Pose_Para"][0, 1])), abs=1e-4)
        # crop_to_image maps crop landmarks back onto the photo's.
        back = apply_affine(sample.crop_to_image.double().numpy(), sample.landmarks.double().numpy())
        np.testing.assert_allclose(back, pt3d[:2].T, atol=1e-3)
        # Protocol: the landmark box's longer side spans 224 / sqrt(2) px of the crop, centred.
        lm = sample.landmarks.numpy()
        ext = lm.max(0) - lm.min(0)
        assert ext.max() == pytest.approx(224 / math.sqrt(2), rel=1e-4)
        np.testing.assert_allclose((lm.max(0) + lm.min(0)) / 2, [111.5, 111.5], atol=1e-3)
        assert sample.source.endswith(ds.records[i].image.name)
    batch = collate_samples([ds[0], ds[1]])
    assert batch.landmarks_3d is not None and batch.landmarks_3d.shape == (2, 68, 3)
    assert batch.params is None and batch.landmark_valid.all()


def test_aflw_detect_crop_never_uses_ground_truth(testdata: Path, tmp_path: Path) -> None:
    ds = AFLW2000Dataset(testdata / "aflw2000_3d", crop="detect", cache_dir=str(tmp_path / "cache"))
    # dlib's frontal HOG detector finds the frontal face but not the 55-degree profile: that one falls back.
    assert ds.detect_fallbacks == 1 and ds.detected[0] is not None and ds.detected[1] is None
    gt_box = AFLW2000Dataset(testdata / "aflw2000_3d")
    assert not np.allclose(ds.crop_transform(0), gt_box.crop_transform(0))
    np.testing.assert_allclose(ds.crop_transform(1), gt_box.crop_transform(1))
    sample = ds[0]
    # Deep3D alignment on detected landmarks puts the ground-truth 5 points near the template positions.
    err = np.abs(five_points_np(sample.landmarks.double().numpy()) - template_positions())
    assert err.max() < 15.0, err
    with pytest.raises(ValueError, match="ground-truth"):
        AFLW2000Dataset(testdata / "aflw2000_3d", crop="detect", landmarks="gt")


def test_aflw_bad_annotations_are_skipped(testdata: Path, tmp_path: Path) -> None:
    src = testdata / "aflw2000_3d"
    for name in ("image00050", "image00251"):
        shutil.copy(src / f"{name}.jpg", tmp_path / f"{name}.jpg")
    shutil.copy(src / "image00050.mat", tmp_path / "image00050.mat")
    (tmp_path / "image00251.mat").write_bytes(b"MATLAB 5.0 garbage")
    shutil.copy(src / "image00050.jpg", tmp_path / "image09999.jpg")  # no .mat at all
    shutil.copy(src / "image00050.jpg", tmp_path / "image08888.jpg")
    mat = scipy.io.loadmat(str(src / "image00050.mat"))
    del mat["Pose_Para"]
    scipy.io.savemat(str(tmp_path / "image08888.mat"), {k: v for k, v in mat.items() if not k.startswith("__")})
    ds = AFLW2000Dataset(tmp_path)
    assert len(ds) == 1
    assert dict(ds.skip_counts) == {"bad_annotation": 2, "no_annotation": 1}
    reasons = {s.path.name: s.detail for s in ds.skipped}
    assert "Pose_Para" in reasons["image08888.jpg"] and "image08888.mat" in reasons["image08888.jpg"]


def test_aflw_truncated_photo_does_not_crash(testdata: Path, tmp_path: Path) -> None:
    src = testdata / "aflw2000_3d"
    for name in ("image00050", "image00251"):
        shutil.copy(src / f"{name}.mat", tmp_path / f"{name}.mat")
        data = (src / f"{name}.jpg").read_bytes()
        (tmp_path / f"{name}.jpg").write_bytes(data if name == "image00251" else data[: len(data) // 3])
    ds = AFLW2000Dataset(tmp_path)
    sample = ds[0]  # the truncated one is replaced by the next good item
    assert sample.source.endswith("image00251.jpg") and ds.load_failures == 1


# ------------------------------------------------------------------------------------------------ 300W-LP
def test_300w_lp(testdata: Path) -> None:
    seen: list[ThreeDDFAParams] = []

    def mapper(p: ThreeDDFAParams) -> torch.Tensor:
        seen.append(p)
        return torch.from_numpy(np.concatenate([p.shape[:80], p.exp])).float()

    ds = W300LPDataset(testdata / "300w_lp", param_mapper=mapper)
    assert len(ds) == 1
    p = ds.parameters(0)
    assert p.shape.shape == (199,) and p.exp.shape == (29,) and p.pose.shape == (7,)
    assert p.tex is not None and p.tex.shape == (199,)
    assert p.yaw_degrees == pytest.approx(-44.0087, abs=1e-3)
    mat = scipy.io.loadmat(str(testdata / "300w_lp" / "IBUG_image_008_1_0.mat"))
    np.testing.assert_allclose(p.shape, mat["Shape_Para"].ravel())
    np.testing.assert_allclose(p.exp, mat["Exp_Para"].ravel())
    sample = ds[0]
    assert sample.params is not None and sample.params.shape == (109,) and len(seen) == 1
    assert sample.yaw == pytest.approx(-44.0087, abs=1e-3)
    back = apply_affine(sample.crop_to_image.double().numpy(), sample.landmarks.double().numpy())
    np.testing.assert_allclose(back, mat["pt2d"].T, atol=1e-3)
    assert W300LPDataset(testdata / "300w_lp")[0].params is None  # no mapping without a mapper


def test_read_3ddfa_mat_errors(tmp_path: Path) -> None:
    scipy.io.savemat(str(tmp_path / "a.mat"), {"pt2d": np.zeros((2, 21))})
    with pytest.raises(ValueError, match=r"a\.mat.*pt2d"):
        read_3ddfa_mat(tmp_path / "a.jpg", tmp_path / "a.mat")
    scipy.io.savemat(
        str(tmp_path / "b.mat"),
        {
            "pt2d": np.zeros((2, 68)),
            "Pose_Para": np.zeros((1, 7)),
            "Shape_Para": np.zeros((10, 1)),
            "Exp_Para": np.zeros((29, 1)),
        },
    )
    with pytest.raises(ValueError, match="Shape_Para has 10 values"):
        read_3ddfa_mat(tmp_path / "b.jpg", tmp_path / "b.mat")


# -------------------------------------------------------------------------------------------------- folder
def test_folder_gt_landmarks(testdata: Path) -> None:
    ds = FolderDataset(testdata / "faces68", landmarks="gt")
    assert len(ds) == 3 and ds.cache_dir is None
    for i in range(3):
        sample = ds[i]
        gt = read_pts(Path(sample.source).with_suffix(".pts"))
        back = apply_affine(sample.crop_to_image.double().numpy(), sample.landmarks.double().numpy())
        np.testing.assert_allclose(back, gt, atol=1e-3)
        # Aligned on those landmarks: the 5 points sit near the template; what is left is head pose and
        # expression, which Deep3D's scale + translation alignment keeps (breakingbad's turned head: ~29 px
        # at the nose tip).
        err = np.linalg.norm(five_points_np(sample.landmarks.double().numpy()) - template_positions(), axis=1)
        assert err.mean() < 20.0 and err.max() < 35.0, (sample.source, err)


def _photo_folder(root: Path, astronaut: np.ndarray) -> dict[str, str | None]:
    """Good photos (several formats and conversions) and one bad file per case; returns name -> expected skip."""
    root.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str | None] = {}
    Image.fromarray(astronaut).save(root / "astro.png")
    expected["astro.png"] = None
    (root / "sub").mkdir()
    Image.fromarray(astronaut[:, ::-1]).save(root / "sub" / "flipped.jpg", quality=92)
    expected["sub/flipped.jpg"] = None
    Image.fromarray(astronaut).convert("L").save(root / "gray.png")
    expected["gray.png"] = None
    rgba = np.concatenate([astronaut, np.full(astronaut.shape[:2] + (1,), 255, np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(root / "rgba.png")
    expected["rgba.png"] = None
    gray16 = (np.asarray(Image.fromarray(astronaut).convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(root / "deep16.png")
    expected["deep16.png"] = None
    (root / "empty.jpg").write_bytes(b"")
    expected["empty.jpg"] = "zero_byte"
    jpeg = (root / "sub" / "flipped.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    expected["truncated.jpg"] = "truncated"
    (root / "notes.jpg").write_text("not an image")
    expected["notes.jpg"] = "not_an_image"
    Image.fromarray(astronaut[:30, :30]).save(root / "tiny.png")
    expected["tiny.png"] = "too_small"
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(root / "noface.png")
    expected["noface.png"] = "no_face"
    return expected


def test_folder_dlib_with_bad_files(tmp_path: Path, astronaut: np.ndarray) -> None:
    expected = _photo_folder(tmp_path / "photos", astronaut)
    ds = FolderDataset(tmp_path / "photos", landmarks="dlib", cache_dir=tmp_path / "cache")
    good = sorted(k for k, v in expected.items() if v is None)
    assert sorted(Path(p).relative_to(tmp_path / "photos").as_posix() for p, _ in ds.items) == good
    got = {s.path.relative_to(tmp_path / "photos").as_posix(): s.reason for s in ds.skipped}
    assert got == {k: v for k, v in expected.items() if v is not None}
    assert sum(ds.skip_counts.values()) == len(expected) - len(good)
    sample = ds[0]
    assert sample.image.shape == (3, 224, 224)
    err = np.abs(five_points_np(sample.landmarks.double().numpy()) - template_positions())
    assert err.max() < 15.0
    # The flipped photo's face is mirrored in the photo but aligned the same way.
    flipped = ds[[i for i, (p, _) in enumerate(ds.items) if p.name == "flipped.jpg"][0]]
    assert torch.isfinite(flipped.landmarks).all()
    # All faces: at least as many samples (astronaut's patch can also fire the HOG detector).
    all_faces = FolderDataset(tmp_path / "photos", landmarks="dlib", faces="all", cache_dir=tmp_path / "cache")
    assert len(all_faces) >= len(ds)


def test_folder_file_broken_after_labelling(tmp_path: Path, astronaut: np.ndarray) -> None:
    root = tmp_path / "p"
    root.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(astronaut).save(root / name)
    ds = FolderDataset(root, landmarks="dlib", cache_dir=tmp_path / "cache")
    assert len(ds) == 2
    (root / "a.png").write_bytes(b"")  # broken after labelling
    assert ds[0].source.endswith("b.png") and ds.load_failures == 1
    (root / "b.png").unlink()
    with pytest.raises(RuntimeError, match="consecutive items failed"):
        ds[0]
    with pytest.raises(IndexError):
        ds[5]


def test_folder_landmarks_outside_skipped(tmp_path: Path, testdata: Path) -> None:
    shutil.copy(testdata / "faces68" / "takeo.ppm", tmp_path / "in.ppm")
    shutil.copy(testdata / "faces68" / "takeo.pts", tmp_path / "in.pts")
    shutil.copy(testdata / "faces68" / "takeo.ppm", tmp_path / "out.ppm")
    pts = read_pts(testdata / "faces68" / "takeo.pts") + 1.0
    pts[:20, 0] -= 500.0
    lines = ["version: 1", "n_points:  68", "{"] + [f"{x} {y}" for x, y in pts] + ["}"]
    (tmp_path / "out.pts").write_text("\n".join(lines))
    shutil.copy(testdata / "faces68" / "takeo.ppm", tmp_path / "noanno.ppm")
    ds = FolderDataset(tmp_path, landmarks="gt")
    assert len(ds) == 1 and dict(ds.skip_counts) == {"landmarks_outside": 1, "landmark_error": 1}


def test_stable_split() -> None:
    tr, va = stable_split(100, 0.1, seed=3)
    assert len(va) == 10 and sorted(tr + va) == list(range(100))
    assert (tr, va) == stable_split(100, 0.1, seed=3)
    assert va != stable_split(100, 0.1, seed=4)[1]
    assert stable_split(5, 0.0, 0) == ([0, 1, 2, 3, 4], [])
    assert len(stable_split(3, 0.01, 0)[1]) == 1
    with pytest.raises(ValueError):
        stable_split(10, 1.0, 0)
