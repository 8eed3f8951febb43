"""The landmark label cache: round trip, corrupt/stale detection, atomic writes, interrupted runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msma.data.cache import (
    CACHE_FORMAT,
    FaceLabel,
    ImageLabels,
    LabelCache,
    PathIndex,
    cached_labels,
    label_image,
    labeller_key,
)
from msma.data.detect import FaceBox
from msma.data.landmarks import GroundTruthLandmarks, LandmarkBackend
from msma.data.prepare import label_files
from msma.utils.files import atomic_write_text
from msma.utils.files import sha256_file as file_sha256

# A deterministic, optionally slow labeller (the cache logic is what is tested, not a model).
FAKE = textwrap.dedent(
    """
    import time
    import numpy as np
    from msma.data.detect import FaceBox
    from msma.data.landmarks import LandmarkBackend

    class FakeDetector:
        name = "fake_det"
        version = "1"

        def __init__(self, delay=0.0):
            self.delay = delay

        def detect(self, image):
            time.sleep(self.delay)
            h, w = image.shape[:2]
            if image.mean() < 5:  # a black image has no face
                return []
            return [FaceBox(w * 0.25, h * 0.25, w * 0.75, h * 0.75, 1.0), FaceBox(0, 0, w * 0.2, h * 0.2, 0.5)]

    class FakeLandmarks(LandmarkBackend):
        name = "fake"
        version = "1"

        def detect(self, image, box, source=None):
            t = np.linspace(0.0, 1.0, 68, dtype=np.float32)
            x = box.left + t * box.width + float(image[0, 0, 0]) / 255.0
            y = box.top + t * box.height
            return np.stack([x, y], axis=1)
    """
)
namespace: dict[str, object] = {}
exec(compile(FAKE, "fake_labeller", "exec"), namespace)
FakeDetector = namespace["FakeDetector"]
FakeLandmarks = namespace["FakeLandmarks"]


def _make_images(folder: Path, n: int, black: tuple[int, ...] = ()) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        arr = np.full((48, 64, 3), 0 if i in black else 20 + 7 * i, dtype=np.uint8)
        p = folder / f"img{i:03d}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def _labels(sha: str = "a" * 64) -> ImageLabels:
    lm = np.arange(136, dtype=np.float32).reshape(68, 2) / 3.0
    return ImageLabels(sha, "k", (FaceLabel(FaceBox(1.5, 2.0, 30.25, 40.0, 0.7), lm),), None, "", (100, 80))


def test_round_trip(tmp_path: Path) -> None:
    cache = LabelCache(tmp_path, "k")
    labels = _labels()
    path = cache.put(labels)
    assert path == tmp_path / "k" / "aa" / f"{'a' * 64}.json"
    got = cache.get("a" * 64)
    assert got is not None and got.ok and got.image_size == (100, 80)
    np.testing.assert_allclose(got.faces[0].landmarks, labels.faces[0].landmarks, atol=1e-3)
    assert got.faces[0].box == labels.faces[0].box
    assert cache.get("b" * 64) is None and cache.invalid == 0
    with pytest.raises(ValueError, match="SHA-256"):
        cache.get("../../etc/passwd")
    with pytest.raises(ValueError, match="put into cache"):
        LabelCache(tmp_path, "other").put(labels)


@pytest.mark.parametrize(
    "corrupt",
    ["truncate", "garbage", "checksum", "format", "wrong_key", "wrong_sha", "bad_shape"],
)
def test_corrupt_or_stale_entry_detected(tmp_path: Path, corrupt: str) -> None:
    cache = LabelCache(tmp_path, "k")
    path = cache.put(_labels())
    text = path.read_text()
    doc = json.loads(text)
    if corrupt == "truncate":
        path.write_text(text[: len(text) // 2])
    elif corrupt == "garbage":
        path.write_bytes(os.urandom(64))
    elif corrupt == "checksum":
        doc["payload"]["faces"][0]["landmarks"][0][0] += 1.0
        path.write_text(json.dumps(doc))
    elif corrupt == "format":
        doc["format"] = CACHE_FORMAT + 1
        path.write_text(json.dumps(doc))
    else:
        from msma.data.cache import _checksum

        if corrupt == "wrong_key":
            doc["payload"]["key"] = "other"
        elif corrupt == "wrong_sha":
            doc["payload"]["sha256"] = "c" * 64
        else:
            doc["payload"]["faces"][0]["landmarks"] = [[0.0, 0.0]] * 5
        doc["checksum"] = _checksum(doc["payload"])
        path.write_text(json.dumps(doc))
    assert cache.get("a" * 64) is None
    assert cache.invalid == 1


def test_corrupt_entry_is_recomputed(tmp_path: Path) -> None:
    images = _make_images(tmp_path / "img", 3)
    backend, detector = FakeLandmarks(), FakeDetector()
    cache_dir = tmp_path / "cache"
    first = label_files(images, backend, detector, cache_dir)
    assert (first.computed, first.cached, first.usable) == (3, 0, 3)
    entry = next(LabelCache(cache_dir, labeller_key(backend, detector)).entries())
    entry.write_text("{ broken")
    second = label_files(images, backend, detector, cache_dir)
    assert (second.computed, second.cached, second.invalid_entries) == (1, 2, 1)
    assert json.loads(entry.read_text())["format"] == CACHE_FORMAT
    for (_, a), (_, b) in zip(first.labels, second.labels):
        assert a is not None and b is not None
        assert a.payload() == b.payload()
        np.testing.assert_array_equal(a.faces[0].landmarks, b.faces[0].landmarks)


def test_atomic_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "d" / "x.json"
    atomic_write_text(target, "old")

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.json"]


def test_skips_are_cached_with_reasons(tmp_path: Path) -> None:
    images = _make_images(tmp_path / "img", 3, black=(1,))
    (tmp_path / "img" / "empty.png").write_bytes(b"")
    images.append(tmp_path / "img" / "empty.png")
    run = label_files(images, FakeLandmarks(), FakeDetector(), tmp_path / "cache")
    assert run.usable == 2 and dict(run.skipped) == {"no_face": 1, "zero_byte": 1}
    rerun = label_files(images, FakeLandmarks(), FakeDetector(), tmp_path / "cache")
    assert rerun.cached == 4 and rerun.computed == 0 and dict(rerun.skipped) == dict(run.skipped)


def test_labels_store_all_faces_largest_first(tmp_path: Path) -> None:
    (img,) = _make_images(tmp_path, 1)
    labels = label_image(img, file_sha256(img), FakeLandmarks(), FakeDetector(), "k", max_outside=1.0)
    assert len(labels.faces) == 2 and labels.faces[0].box.area > labels.faces[1].box.area
    assert labels.select("largest") == labels.faces[:1] and labels.select("all") == labels.faces


def test_landmarks_outside_the_image_are_dropped(tmp_path: Path) -> None:
    (img,) = _make_images(tmp_path, 1)

    class Outside(LandmarkBackend):
        name, version = "outside", "1"

        def detect(self, image: np.ndarray, box: FaceBox, source: Path | None = None) -> np.ndarray:
            pts = np.full((68, 2), 10.0, dtype=np.float32)
            pts[:20] = -50.0  # 29 % outside
            return pts

    labels = label_image(img, file_sha256(img), Outside(), FakeDetector(), "k")
    assert not labels.ok and labels.skip_reason == "landmarks_outside"


def test_a_detector_that_aborts_skips_the_image_with_its_reason(tmp_path: Path) -> None:
    """A detector library raising on one odd image (dlib's CNN on a few-pixel strip did) skips that image."""
    (img,) = _make_images(tmp_path, 1)

    class Aborting(FakeDetector):
        def detect(self, image):  # type: ignore[no-untyped-def]
            raise RuntimeError("Error detected in file ../../dlib/cuda/tensor.h")

    labels = label_image(img, file_sha256(img), FakeLandmarks(), Aborting(), "k")
    assert not labels.ok and labels.skip_reason == "detector_failed" and "tensor.h" in labels.detail
    assert labels.image_size == Image.open(img).size[::-1]

    # The abort is the run's failure, not the image's: it is not cached, so the next run labels the image again.
    cache = LabelCache(tmp_path / "cache", labeller_key(FakeLandmarks(), Aborting()))
    first, status = cached_labels(img, file_sha256(img), cache, FakeLandmarks(), Aborting())
    assert status == "computed" and first.skip_reason == "detector_failed"
    assert cache.get(file_sha256(img)) is None and not list(cache.entries())
    again, status = cached_labels(img, file_sha256(img), cache, FakeLandmarks(), FakeDetector())
    assert status == "computed" and again.ok and len(again.faces) >= 1
    assert cached_labels(img, file_sha256(img), cache, FakeLandmarks(), FakeDetector())[1] == "cached"


def test_gt_backend_has_no_detector_in_key() -> None:
    assert labeller_key(GroundTruthLandmarks(), FakeDetector()) == "gt-1"
    assert labeller_key(FakeLandmarks(), FakeDetector()) == "fake-1__fake_det-1"


def test_path_index_avoids_rehashing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (img,) = _make_images(tmp_path / "img", 1)
    index = PathIndex(tmp_path / "paths.json")
    sha = index.sha256(img)
    index.save()
    calls = []
    import msma.data.cache as cache_mod

    monkeypatch.setattr(cache_mod, "sha256_file", lambda p: calls.append(p) or "x")
    again = PathIndex(tmp_path / "paths.json")
    assert again.sha256(img) == sha and calls == []
    time.sleep(0.01)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(img)  # changed file -> rehashed
    assert again.sha256(img) == "x" and calls == [img]
    (tmp_path / "bad.json").write_text("not json")
    assert PathIndex(tmp_path / "bad.json").sha256(img) == "x"


def test_cached_labels_reports_status(tmp_path: Path) -> None:
    (img,) = _make_images(tmp_path, 1)
    cache = LabelCache(tmp_path / "c", "k")
    sha = file_sha256(img)
    a, s1 = cached_labels(img, sha, cache, FakeLandmarks(), FakeDetector())
    b, s2 = cached_labels(img, sha, cache, FakeLandmarks(), FakeDetector())
    assert (s1, s2) == ("computed", "cached") and a.payload() == b.payload()


def test_interrupted_run_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    """Kill a labelling subprocess mid-way (SIGKILL), rerun: same labels as an uninterrupted run, one entry
    per image, no temporary files, finished images not recomputed."""
    n = 12
    images = _make_images(tmp_path / "img", n, black=(5,))
    cache_dir = tmp_path / "cache"
    script = tmp_path / "run.py"
    script.write_text(
        FAKE
        + textwrap.dedent(
            f"""
            from pathlib import Path
            from msma.data.prepare import label_files
            files = sorted(Path({str(tmp_path / "img")!r}).glob("*.png"))
            label_files(files, FakeLandmarks(), FakeDetector(delay=0.25), Path({str(cache_dir)!r}))
            """
        )
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    key = labeller_key(FakeLandmarks(), FakeDetector())
    cache = LabelCache(cache_dir, key)
    deadline = time.time() + 60
    try:
        while time.time() < deadline and len(list(cache.entries())) < 4:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done_before = len(list(cache.entries()))
    assert 4 <= done_before < n, done_before
    # Every entry written so far is complete and valid.
    shas_before = {p.stem for p in cache.entries()}
    assert all(cache.get(s) is not None for s in shas_before)

    resumed = label_files(images, FakeLandmarks(), FakeDetector(), cache_dir)
    assert resumed.cached >= done_before and resumed.cached + resumed.computed == n
    assert resumed.invalid_entries == 0
    entries = list(cache.entries())
    assert len(entries) == n == len({p.stem for p in entries})
    assert not list(cache_dir.rglob(".tmp-*"))

    clean = label_files(images, FakeLandmarks(), FakeDetector(), tmp_path / "clean")
    assert [a.payload() if a else None for _, a in resumed.labels] == [
        b.payload() if b else None for _, b in clean.labels
    ]
    assert (resumed.usable, dict(resumed.skipped)) == (n - 1, {"no_face": 1})
