"""benchmarks/small_faces.py: a real face pasted small into a large photo is placed where its annotation box says,
the chain finds it there, and a photo without a face reports none."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark: Callable[[str], Any]) -> Any:
    return load_benchmark("small_faces")


def test_pasted_face_lands_in_its_box(bench: Any) -> None:
    image = np.zeros((200, 300, 3), np.uint8)
    image[50:150, 100:200] = 255  # the "face": a white square, its annotation its corners
    gt = np.array([[100.0, 50.0], [199.0, 149.0]])
    canvas = np.zeros((400, 500, 3), np.uint8)
    out, box = bench.paste_face(image, gt, 40, canvas, np.random.default_rng(0))
    left, top, right, bottom = box
    assert right - left == pytest.approx(40.0, abs=0.5) and bottom - top == pytest.approx(40.0, abs=0.5)
    inner = out[int(top) + 2 : int(bottom) - 1, int(left) + 2 : int(right) - 1]
    assert inner.size and inner.min() == 255  # the square is inside its box ...
    assert out.sum() / 255 / 3 == pytest.approx(40 * 40, rel=0.1)  # ... and nothing else was pasted white


def test_classify_found_and_false(bench: Any) -> None:
    from msma.data.detect import FaceBox
    from msma.data.mediapipe_landmarker import DenseFace

    box = (100.0, 100.0, 160.0, 160.0)
    near = DenseFace(FaceBox(98.0, 102.0, 162.0, 165.0), None, "tiles")
    far = DenseFace(FaceBox(400.0, 400.0, 460.0, 460.0), None, "box:opencv_profile")
    huge = DenseFace(FaceBox(60.0, 60.0, 300.0, 300.0), None, "landmarker")  # holds the face, 4x its width
    assert bench.classify([near, far], box) == (True, ["box:opencv_profile"])
    assert bench.classify([huge], box) == (False, [])


def test_small_takeo_found_and_coffee_has_no_face(bench: Any, testdata: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for suffix in (".ppm", ".pts"):
        shutil.copy(testdata / "faces68" / f"takeo{suffix}", photos / f"takeo{suffix}")
    argv = ["--photos", str(photos), "--sizes", "90", "--no-face", "coffee", "--noise", ""]
    assert bench.main([*argv, "--out-name", "sf", "--out-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "sf.json").read_text())
    assert [(r["photo"], r["size"], r["found"], r["false"]) for r in result["pasted"]] == [("takeo.ppm", 90, True, [])]
    assert [(r["image"], r["false"]) for r in result["no_face"]] == [("coffee", [])]
    assert result["summary"]["pasted"] == {"count": 1, "found": 1} and (tmp_path / "sf.md").is_file()
