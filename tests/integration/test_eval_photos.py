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
    assert [n for n, r in rows.items() if "skipped" in r] == ["image00251.jpg"]  # -55 deg yaw: no detection
    assert rows["breakingbad.jpg"]["faces_detected"] == 2  # the annotated (not the largest) face is scored
    assert rows["takeo.ppm"]["faces_detected"] == "largest"  # what msma reconstruct takes
    assert result["count"] == 5
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


def test_eval_photos_rejects_bad_inputs(testdata: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert cli_main(["--ckpt", "mean", "--data", "photos", "--root", str(tmp_path / "none")]) == 2
    assert "not a folder" in capsys.readouterr().err
    shutil.copy(testdata / "faces68" / "takeo.ppm", tmp_path / "a.ppm")
    (tmp_path / "a.pts").write_text("version: 1\nn_points: 68\n{\n1 2\n}\n")
    assert cli_main(["--ckpt", "mean", "--data", "photos", "--root", str(tmp_path)]) == 2
    assert "a.pts" in capsys.readouterr().err
    assert cli_main(["--ckpt", "mean", "--data", "photos", "--root", str(testdata), "--landmarks", "gt"]) == 2
    assert "ground truth" in capsys.readouterr().err
