"""``msma.data.detect.detect_faces``: largest-first ordering, the "largest" choice, and the MediaPipe chain's rules."""

from __future__ import annotations

import numpy as np

from msma.data.detect import FaceBox, detect_faces

IMAGE = np.zeros((64, 64, 3), np.uint8)


def _box(side: float, score: float = 1.0) -> FaceBox:
    return FaceBox(0.0, 0.0, side, side, score)


class _Plain:
    """A detector returning fixed boxes, most confident first (not largest first)."""

    name = "plain"
    version = "1"

    def __init__(self, boxes: list[FaceBox]) -> None:
        self.boxes = boxes
        self.calls: list[bool] = []

    def detect(self, image: np.ndarray, largest_only: bool = False) -> list[FaceBox]:
        self.calls.append(largest_only)
        return list(self.boxes)


class _Chain(_Plain):
    """Shaped like the MediaPipe chain: ``exhaustive`` switch, ``remembered`` landmarks, landmarked faces first."""

    exhaustive = False

    def remembered(self, image: np.ndarray, box: FaceBox) -> None:
        return None


def test_all_faces_sorted_largest_first_and_largest_alone() -> None:
    det = _Plain([_box(10, 0.9), _box(30, 0.5), _box(20, 0.7)])
    assert [b.right for b in detect_faces(det, IMAGE, all_faces=True)] == [30, 20, 10]
    assert [b.right for b in detect_faces(det, IMAGE, all_faces=False)] == [30]
    assert det.calls == [False, True]  # the detector is told when only the largest face is kept
    assert detect_faces(_Plain([]), IMAGE, all_faces=False) == []


def test_chain_keeps_its_first_face_and_follows_all_faces() -> None:
    # The chain lists a landmarked face (small) before a box-only one (large): "largest" keeps the landmarked one.
    det = _Chain([_box(10), _box(40)])
    assert [b.right for b in detect_faces(det, IMAGE, all_faces=False)] == [10]
    assert det.exhaustive is False
    assert [b.right for b in detect_faces(det, IMAGE, all_faces=True)] == [40, 10]
    assert det.exhaustive is True
