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

from msma.data.align import alignment_transform, apply_affine, template_positions
from msma.data.batch import collate_samples
from msma.data.datasets import (
    AFLW2000Dataset,
    FolderDataset,
    W300LPDataset,
    stable_split,
)
from msma.data.landmark_index import five_points_np, flip_landmarks
from msma.data.landmarks import read_pts
from msma.data.threeddfa import ThreeDDFAParams, read_3ddfa_mat, read_300wlp_landmarks


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
    cache = str(tmp_path / "cache")
    ds = AFLW2000Dataset(testdata / "aflw2000_3d", crop="detect", cache_dir=cache, mediapipe_fallback=False)
    # dlib's frontal HOG detector finds the frontal face but not the 55-degree profile: that one falls back.
    assert ds.detect_fallbacks == 1 and ds.detected[0] is not None and ds.detected[1] is None
    assert ds.detected_by_fallback == 0
    gt_box = AFLW2000Dataset(testdata / "aflw2000_3d")
    assert not np.allclose(ds.crop_transform(0), gt_box.crop_transform(0))
    np.testing.assert_allclose(ds.crop_transform(1), gt_box.crop_transform(1))
    # With MediaPipe's chain as msma reconstruct's fallback (the default) the profile is found and aligned too.
    fb = AFLW2000Dataset(testdata / "aflw2000_3d", crop="detect", cache_dir=cache)
    assert fb.detect_fallbacks == 0 and fb.detected_by_fallback == 1
    np.testing.assert_allclose(fb.detected[0], ds.detected[0])  # dlib's labels, from the cache
    assert fb.detected[1] is not None and not np.allclose(fb.crop_transform(1), gt_box.crop_transform(1))
    # Deep3D alignment on detected landmarks puts the ground-truth 5 points near the template positions.
    err = np.abs(five_points_np(ds[0].landmarks.double().numpy()) - template_positions())
    assert err.max() < 15.0, err
    # The profile cannot meet the frontal template, but its ground truth lies inside the crop at the frontal
    # face's scale (not at the gt_box crop's, where the face fills 1/sqrt(2) of the side).
    lm = fb[1].landmarks.double().numpy()
    assert lm.min() > 0 and lm.max() < 224, lm
    ext, ext0 = np.ptp(lm, axis=0), np.ptp(ds[0].landmarks.double().numpy(), axis=0)
    assert 0.6 < ext[1] / ext0[1] < 1.4, (ext, ext0)
    with pytest.raises(ValueError, match="ground-truth"):
        AFLW2000Dataset(testdata / "aflw2000_3d", crop="detect", landmarks="gt")


def test_aflw_detect_crop_does_not_box_crop_an_unreadable_photo(testdata: Path, tmp_path: Path) -> None:
    """A photo labelling cannot read is not counted as a detection fallback to the ground-truth box; it fails to
    load (and msma eval lists it as skipped)."""
    src = testdata / "aflw2000_3d"
    shutil.copy(src / "image00050.jpg", tmp_path / "image00050.jpg")
    shutil.copy(src / "image00050.mat", tmp_path / "image00050.mat")
    (tmp_path / "image00051.jpg").write_bytes(b"")
    shutil.copy(src / "image00050.mat", tmp_path / "image00051.mat")
    ds = AFLW2000Dataset(tmp_path, crop="detect", cache_dir=str(tmp_path / "cache"), mediapipe_fallback=False)
    assert ds.detected[0] is not None and ds.detected[1] is None
    assert ds.unreadable == {1: "zero_byte"} and ds.detect_fallbacks == 0
    with pytest.raises(ValueError, match="zero_byte"):
        ds.load_strict(1)


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
    sample = ds[0]  # the truncated one is replaced by the next good item, marked as its stand-in
    assert sample.source.endswith("image00251.jpg") and ds.load_failures == 1
    assert sample.replaces.startswith(f"{tmp_path / 'image00050.jpg'}: ") and "truncated" in sample.replaces
    assert ds[1].replaces == ""  # the same photo under its own index is genuine


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


def _lp_tree(testdata: Path, root: Path) -> dict[str, np.ndarray]:
    """A 300W-LP layout from the real test image: IBUG/ + IBUG_Flip/ + landmarks/IBUG/*_pts.mat (synthetic
    ``pts_3d``: ``pt2d`` with the jaw and nose tip moved, so the two conventions differ where they matter).

    Returns the expected ``landmarks`` (original pixels) per image name.
    """
    src_jpg, src_mat = testdata / "300w_lp" / "IBUG_image_008_1_0.jpg", testdata / "300w_lp" / "IBUG_image_008_1_0.mat"
    mat = {k: v for k, v in scipy.io.loadmat(str(src_mat)).items() if not k.startswith("__")}
    pt2d = mat["pt2d"].T.astype(np.float32)  # (68, 2)
    pts3d = pt2d.copy()
    pts3d[:17] += np.array([25.0, -4.0], np.float32)  # hidden-side jaw behind the visible contour
    pts3d[30] += np.array([3.0, 2.0], np.float32)  # the nose tip (an alignment point)
    (root / "IBUG").mkdir(parents=True)
    (root / "IBUG_Flip").mkdir()
    (root / "landmarks" / "IBUG").mkdir(parents=True)
    width = Image.open(src_jpg).size[0]
    expected: dict[str, np.ndarray] = {}
    for stem, lm_file in (("a_0", "good"), ("a_1", None), ("a_2", "corrupt"), ("a_3", "transposed")):
        shutil.copy(src_jpg, root / "IBUG" / f"{stem}.jpg")
        scipy.io.savemat(str(root / "IBUG" / f"{stem}.mat"), mat)
        lm_path = root / "landmarks" / "IBUG" / f"{stem}_pts.mat"
        if lm_file == "good":
            scipy.io.savemat(str(lm_path), {"pts_2d": pt2d.astype(np.float64), "pts_3d": pts3d.astype(np.float64)})
            expected[f"IBUG/{stem}.jpg"] = pts3d
        elif lm_file == "corrupt":
            lm_path.write_bytes(b"MATLAB 5.0 MAT-file, truncated")
        elif lm_file == "transposed":
            scipy.io.savemat(str(lm_path), {"pts_2d": pt2d.T, "pts_3d": pts3d.T.astype(np.float64)})
        else:
            expected[f"IBUG/{stem}.jpg"] = pt2d
    # The flipped twin of a_0: mirrored pixels, its own .mat, no landmarks/IBUG_Flip/ (as distributed).
    Image.open(src_jpg).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "IBUG_Flip" / "a_0.jpg", quality=95)
    flip_mat = dict(mat, pt2d=flip_landmarks(torch.from_numpy(pt2d), width).numpy().T)
    scipy.io.savemat(str(root / "IBUG_Flip" / "a_0.mat"), flip_mat)
    expected["IBUG_Flip/a_0.jpg"] = flip_landmarks(torch.from_numpy(pts3d), width).numpy()
    return expected


def test_300w_lp_prefers_3d_landmarks_files(testdata: Path, tmp_path: Path) -> None:
    root = tmp_path / "300W_LP"
    expected = _lp_tree(testdata, root)
    ds = W300LPDataset(root)
    assert len(ds) == 3
    assert dict(ds.landmark_counts) == {"pts_3d": 2, "pt2d": 1}
    assert dict(ds.skip_counts) == {"bad_annotation": 2}
    details = {s.path.name: s.detail for s in ds.skipped}
    assert "a_2_pts.mat" in details["a_2.jpg"] and "unreadable 300W-LP landmarks file" in details["a_2.jpg"]
    assert "a_3_pts.mat" in details["a_3.jpg"] and "pts_3d has shape (2, 68)" in details["a_3.jpg"]
    sources = {r.image.relative_to(root).as_posix(): r.landmark_source for r in ds.records}
    assert sources == {"IBUG/a_0.jpg": "pts_3d", "IBUG/a_1.jpg": "pt2d", "IBUG_Flip/a_0.jpg": "pts_3d"}
    for i, rec in enumerate(ds.records):
        want = expected[rec.image.relative_to(root).as_posix()]
        np.testing.assert_allclose(rec.landmarks, want, atol=1e-4)
        sample = ds[i]
        assert sample.landmarks.shape == (68, 2) and sample.landmarks.dtype == torch.float32
        # The target is those landmarks in crop pixels, and the crop is aligned on them (not on pt2d).
        back = apply_affine(sample.crop_to_image.double().numpy(), sample.landmarks.double().numpy())
        np.testing.assert_allclose(back, want, atol=1e-3)
        np.testing.assert_allclose(
            sample.crop_to_image.numpy(), alignment_transform(want, ds.template, 224), rtol=1e-5, atol=1e-3
        )
    # The flipped image's landmarks describe the mirrored face: point 36 (outer corner of the eye on the viewer's
    # left) is again on the left of point 45.
    flip_rec = next(r for r in ds.records if r.image.parent.name == "IBUG_Flip")
    assert flip_rec.landmarks[36, 0] < flip_rec.landmarks[45, 0]
    # Switched off: pt2d everywhere, no landmarks file read (the corrupt ones are not skipped then).
    plain = W300LPDataset(root, landmarks_dir=None)
    assert len(plain) == 5 and dict(plain.landmark_counts) == {"pt2d": 5} and plain.skipped == []
    mat = scipy.io.loadmat(str(root / "IBUG" / "a_0.mat"))
    np.testing.assert_allclose(plain.records[0].landmarks, mat["pt2d"].T, atol=1e-4)
    # An absolute landmarks folder works too; one that does not exist means pt2d everywhere.
    assert W300LPDataset(root, landmarks_dir=root / "landmarks").landmark_counts["pts_3d"] == 2
    assert dict(W300LPDataset(root, landmarks_dir="nowhere").landmark_counts) == {"pt2d": 5}


def test_read_300wlp_landmarks_errors(tmp_path: Path) -> None:
    scipy.io.savemat(str(tmp_path / "x_pts.mat"), {"pts_2d": np.zeros((68, 2))})
    with pytest.raises(ValueError, match=r"x_pts\.mat: no pts_3d.*pts_2d"):
        read_300wlp_landmarks(tmp_path / "x_pts.mat")
    bad = np.zeros((68, 2))
    bad[3, 1] = np.nan
    scipy.io.savemat(str(tmp_path / "y_pts.mat"), {"pts_3d": bad})
    with pytest.raises(ValueError, match=r"y_pts\.mat: pts_3d: 1 of the 68 points are not finite"):
        read_300wlp_landmarks(tmp_path / "y_pts.mat")
    good = np.arange(136, dtype=np.float64).reshape(68, 2)
    scipy.io.savemat(str(tmp_path / "z_pts.mat"), {"pts_3d": good})
    out = read_300wlp_landmarks(tmp_path / "z_pts.mat")
    assert out.shape == (68, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out, good.astype(np.float32))


def test_prepare_reports_300w_lp_landmark_sources(testdata: Path, tmp_path: Path) -> None:
    from msma.data.config import SourceConfig
    from msma.data.prepare import prepare_sources

    root = tmp_path / "300W_LP"
    _lp_tree(testdata, root)
    (report,) = prepare_sources([SourceConfig(kind="300w_lp", root=str(root))], ["lp"])
    assert report.samples == 3 and report.skipped == {"bad_annotation": 2}
    assert "pts_3d (3D convention) 2, pt2d (2D contour) 1" in report.detail
    (plain,) = prepare_sources([SourceConfig(kind="300w_lp", root=str(root))], ["lp"], w300lp_landmarks=None)
    assert plain.samples == 5 and "pts_3d (3D convention) 0" in plain.detail


def test_dense_to_crop() -> None:
    from msma.data.datasets import dense_to_crop

    # crop -> image: scale 2, shift (10, 20): an image point (x, y) is at ((x - 10) / 2, (y - 20) / 2) in the crop.
    m = np.array([[2.0, 0.0, 10.0], [0.0, 2.0, 20.0], [0.0, 0.0, 1.0]])
    dense = np.zeros((478, 3), np.float32)
    dense[:, 0], dense[:, 1], dense[:, 2] = np.arange(478) + 10, 2 * np.arange(478) + 20, -4.0
    out = dense_to_crop(dense, m, "p.jpg")
    assert out.shape == (478, 3) and out.dtype == torch.float32
    np.testing.assert_allclose(out[:, 0].numpy(), np.arange(478) / 2, atol=1e-5)
    np.testing.assert_allclose(out[:, 1].numpy(), np.arange(478), atol=1e-5)
    np.testing.assert_allclose(out[:, 2].numpy(), -2.0, atol=1e-6)  # depth scales with the crop
    with pytest.raises(ValueError, match=r"p\.jpg: cached dense landmarks have shape \(68, 3\)"):
        dense_to_crop(np.zeros((68, 3)), m, "p.jpg")


def test_folder_mediapipe_carries_dense_landmarks(testdata: Path, tmp_path: Path) -> None:
    """Photos labelled by MediaPipe carry its 478 points in crop pixels: the 68 landmarks are 68 of them, so the
    dense points that mark them coincide with the sample's landmarks after the same alignment."""
    from msma.data.mediapipe_mesh import MEDIAPIPE_TO_68, NUM_DENSE

    ds = FolderDataset(testdata / "faces68", landmarks="mediapipe", detector="mediapipe", cache_dir=tmp_path / "cache")
    assert len(ds) == 3
    batch = collate_samples([ds[i] for i in range(3)])
    assert batch.dense is not None and batch.dense.shape == (3, NUM_DENSE, 3) and batch.dense_valid is None
    assert bool(torch.isfinite(batch.dense).all())
    # the cache rounds to 0.01 px in the photo; the crop scale is below 1 for these photos
    torch.testing.assert_close(batch.dense[:, list(MEDIAPIPE_TO_68), :2], batch.landmarks, atol=0.02, rtol=0)
    # points inside the 224 crop around the face (the oval spans most of it)
    xy = batch.dense[:, :468, :2]
    assert float(xy.min()) > -20 and float(xy.max()) < 244
    assert FolderDataset(testdata / "faces68", landmarks="gt")[0].dense is None  # other backends: no dense target


def test_read_3ddfa_mat_errors(tmp_path: Path) -> None:
    scipy.io.savemat(str(tmp_path / "a.mat"), {"pt2d": np.zeros((2, 21))})
    with pytest.raises(ValueError, match=r"a\.mat.*pt2d"):
        read_3ddfa_mat(tmp_path / "a.jpg", tmp_path / "a.mat")
    scipy.io.savemat(
        str(tmp_path / "b.mat"),
        {
            "pt2d": np.stack([np.arange(68.0), np.arange(68.0) % 9]),
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
    (root / "sub" / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    expected["sub/IMG_0001.HEIC"] = "unsupported"  # a phone's photo: named, not passed over
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
