"""``msma eval --data photos``: labelled real photos, checkpoint vs mean face under the same detections."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from msma.cli.eval import cli_main

pytestmark = pytest.mark.slow


def _pts_by_hand(path: Path) -> np.ndarray:
    """The 68 points of a .pts file, parsed here independently of msma (1-based -> 0-based pixels)."""
    lines = path.read_text().splitlines()
    start = lines.index("{") + 1
    pts = np.array([[float(v) for v in line.split()] for line in lines[start : start + 68]])
    return pts - 1.0


def test_eval_photos_mean_face_against_a_hand_computation(testdata: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from msma.inference import Reconstructor

    out = tmp_path / "photos.json"
    assert cli_main(["--ckpt", "mean", "--data", "photos", "--root", str(testdata), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "takeo.ppm" in printed and "mean face" in printed
    result = json.loads(out.read_text())["result"]
    rows = {Path(r["image"]).name: r for r in result["images"]}
    assert set(rows) == {
        "takeo.ppm",
        "einstein.jpg",
        "breakingbad.jpg",
        "image00050.jpg",
        "image00251.jpg",
        "IBUG_image_008_1_0.jpg",
    }
    # every face found: dlib misses the -55 deg profile image00251, MediaPipe's chain (the fallback) finds it
    assert [n for n, r in rows.items() if "skipped" in r] == []
    assert rows["breakingbad.jpg"]["faces_detected"] == 2  # the annotated (not the largest) face is scored
    assert rows["takeo.ppm"]["faces_detected"] == "largest"  # what msma reconstruct takes
    assert result["count"] == 6
    # For the mean face both columns are the same network.
    for r in result["images"]:
        if "nme" in r:
            assert r["nme"] == pytest.approx(r["nme_mean_face"])
    # takeo by hand: dlib detection + 5-point alignment, then NME = mean distance / sqrt(w*h) of the GT box.
    photo = testdata / "faces68" / "takeo.ppm"
    gt = _pts_by_hand(photo.with_suffix(".pts"))
    pred = Reconstructor(None, renderer_backend="torch").reconstruct(str(photo)).landmarks
    w, h = gt.max(0) - gt.min(0)
    by_hand = 100.0 * np.linalg.norm(pred - gt, axis=1).mean() / np.sqrt(w * h)
    assert rows["takeo.ppm"]["nme"] == pytest.approx(by_hand, rel=1e-6)
    assert 1.0 < by_hand < 15.0
    assert result["mean"] == pytest.approx(np.mean([r["nme"] for r in result["images"] if "nme" in r]))
    assert json.loads(out.read_text())["result"]["protocol"]["clamp_expressions"].startswith(
        "checkpoint column: blendshape weights clamped to [0, 1]"
    )
    raw = tmp_path / "raw.json"
    argv = ["--ckpt", "mean", "--data", "photos", "--root", str(testdata), "--limit", "1", "--out", str(raw)]
    assert cli_main([*argv, "--no-clamp-expressions"]) == 0
    assert json.loads(raw.read_text())["result"]["protocol"]["clamp_expressions"] == "none"


def test_eval_photos_rejects_bad_inputs(testdata: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert cli_main(["--ckpt", "mean", "--data", "photos", "--root", str(tmp_path / "none")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert cli_main(["--ckpt", "mean", "--data", "photos", "--root", str(tmp_path)]) == 2
    assert "no image with a .pts or .mat annotation" in capsys.readouterr().err
    assert cli_main(["--ckpt", "mean", "--data", "photos", "--root", str(testdata), "--landmarks", "gt"]) == 2
    assert "ground truth" in capsys.readouterr().err


def test_eval_photos_skips_and_counts_bad_files(testdata: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """A malformed annotation, an empty, a truncated, a non-image and a HEIC photo are each skipped with their reason
    and counted; the good photo is still scored exactly as alone."""
    takeo = testdata / "faces68" / "takeo.ppm"
    root = tmp_path / "photos"
    root.mkdir()
    shutil.copy(takeo, root / "takeo.ppm")
    shutil.copy(takeo.with_suffix(".pts"), root / "takeo.pts")
    shutil.copy(takeo, root / "a.ppm")
    (root / "a.pts").write_text("version: 1\nn_points: 68\n{\n1 2\n}\n")
    shutil.copy(takeo, root / "holes.ppm")  # a NaN point: skipped, not a NaN mean
    lines = takeo.with_suffix(".pts").read_text().splitlines()
    lines[lines.index("{") + 1] = "nan 1"
    (root / "holes.pts").write_text("\n".join(lines) + "\n")
    (root / "empty.png").write_bytes(b"")
    (root / "noise.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    from PIL import Image

    Image.open(takeo).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (root / "trunc.jpg").write_bytes(data[: len(data) // 3])
    (root / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    for stem in ("empty", "noise", "trunc", "phone"):
        shutil.copy(takeo.with_suffix(".pts"), root / f"{stem}.pts")
    out = tmp_path / "photos.json"
    assert cli_main(["--ckpt", "mean", "--data", "photos", "--root", str(root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "photos skipped" in printed
    result = json.loads(out.read_text())["result"]
    rows = {Path(r["image"]).name: r for r in result["images"]}
    assert set(rows) == {"takeo.ppm", "a.ppm", "holes.ppm", "empty.png", "noise.jpg", "trunc.jpg", "phone.heic"}
    reasons = {n: r["skipped"].split(":")[0] for n, r in rows.items() if "skipped" in r}
    assert reasons == {
        "a.ppm": "bad_annotation",
        "holes.ppm": "bad_annotation",
        "empty.png": "zero_byte",
        "noise.jpg": "not_an_image",
        "trunc.jpg": "truncated",
        "phone.heic": "unsupported",
    }
    assert "a.pts" in rows["a.ppm"]["skipped"] and "holes.pts: 1 of the 68 points" in rows["holes.ppm"]["skipped"]
    assert "convert to JPEG or PNG" in rows["phone.heic"]["skipped"]
    assert result["count"] == 1 and len(result["skipped"]) == 6
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(takeo, alone / "takeo.ppm")
    shutil.copy(takeo.with_suffix(".pts"), alone / "takeo.pts")
    from msma.evaluation.photos import evaluate_photos

    assert result["mean"] == pytest.approx(evaluate_photos(None, alone)["mean"], rel=1e-9)
    # Nothing scorable: the report is still written, with the reasons, and the exit status is 1.
    (root / "takeo.ppm").write_bytes(b"")
    assert cli_main(["--ckpt", "mean", "--data", "photos", "--root", str(root), "--out", str(out)]) == 1
    assert "nothing could be scored" in capsys.readouterr().err
    assert json.loads(out.read_text())["result"]["count"] == 0


def test_eval_photos_fit_on_aflw_folders_bins_by_yaw(testdata: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """`--fit` scores `msma reconstruct --fit` against the mean face on the same MediaPipe detections; AFLW-style
    .mat files give the yaw bins (3DDFA protocol) and their mean."""
    import scipy.io

    root = tmp_path / "aflw"
    shutil.copytree(testdata / "aflw2000_3d", root)
    out = tmp_path / "fit.json"
    assert cli_main(["--ckpt", "mean", "--data", "photos", "--root", str(root), "--fit", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "NME |yaw| 0-30 (%)" in printed and "mean over the yaw bins present" in printed
    report = json.loads(out.read_text())["result"]
    rows = {Path(r["image"]).name: r for r in report["images"]}
    assert set(rows) == {"image00050.jpg", "image00251.jpg"} and all("nme" in r for r in rows.values())
    for name, r in rows.items():
        yaw = float(np.degrees(scipy.io.loadmat(str(root / name.replace(".jpg", ".mat")))["Pose_Para"].reshape(-1)[1]))
        assert r["yaw"] == pytest.approx(yaw)
        # Fitting to the dense landmarks beats the mean face placed by the 5-point alignment.
        assert r["nme"] < r["nme_mean_face"]
    assert rows["image00050.jpg"]["yaw_bin"] == "0-30" and rows["image00251.jpg"]["yaw_bin"] == "30-60"
    bins = report["yaw_bins"]["checkpoint"]
    assert bins["counts"] == {"0-30": 1, "30-60": 1, "60-90": 0} and bins["bins"]["60-90"] is None
    assert not bins["all_bins_present"]
    assert bins["balanced"] == pytest.approx((rows["image00050.jpg"]["nme"] + rows["image00251.jpg"]["nme"]) / 2)
    assert report["yaw_bins"]["mean_face"]["bins"]["0-30"] == pytest.approx(rows["image00050.jpg"]["nme_mean_face"])
    assert report["protocol"]["fit"].startswith("checkpoint column: 3DMM fitting")


def test_eval_fit_needs_photos(testdata: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    code = cli_main(["--ckpt", "mean", "--data", "aflw2000_3d", "--root", str(testdata / "aflw2000_3d"), "--fit"])
    assert code == 2 and "--fit applies to --data photos" in capsys.readouterr().err
