"""Static skin creases on synthetic faces (``skin_creases``; msma.data.synthetic.creases)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msma.data.synthetic import SyntheticFaceDataset
from msma.data.synthetic.creases import CREASE_DRAWS, MAX_DARKENING, crease_layer

SIZE = 96


@pytest.fixture(scope="module")
def mean_landmarks(ict_model) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The mean face's 68 landmarks, frontal, in a 96 px crop."""
    with torch.no_grad():
        return ict_model(ict_model.layout.zeros(1), image_size=SIZE).landmarks_2d[0].double().numpy()


def _draws(folds: bool, forehead: bool) -> np.ndarray:
    r = np.full(CREASE_DRAWS, 0.5)
    r[0] = 0.1 if folds else 0.9
    r[9] = 0.1 if forehead else 0.9
    return r


def _mass(layer: np.ndarray, centre: np.ndarray, radius: float) -> float:
    yy, xx = np.mgrid[: layer.shape[0], : layer.shape[1]]
    return float(layer[(xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 < radius**2].sum())


def test_folds_lie_beside_the_nose_and_mouth_and_lines_above_the_brows(mean_landmarks: np.ndarray) -> None:
    lm = mean_landmarks
    eye = float(np.linalg.norm(lm[45] - lm[36]))
    none = crease_layer(lm, SIZE, _draws(False, False))
    assert none.shape == (SIZE, SIZE) and none.dtype == np.float32 and not none.any()
    folds = crease_layer(lm, SIZE, _draws(True, False))
    assert 0.1 < folds.max() <= MAX_DARKENING
    for wing, corner in ((31, 48), (35, 54)):  # each fold: between its nose wing and mouth corner, not on them
        middle = (lm[wing] + lm[corner]) / 2
        outward = np.sign(lm[corner][0] - lm[30][0])
        assert _mass(folds, middle + [outward * 0.12 * eye, 0], 0.15 * eye) > 0.5
    for point in (30, 8, 36, 45, 62):  # nose tip, chin, eye corners, inner lip
        assert _mass(folds, lm[point], 0.05 * eye) == 0.0, point
    forehead = crease_layer(lm, SIZE, _draws(False, True))
    rows = np.nonzero(forehead.sum(1) > 0)[0]
    assert rows.max() < lm[17:27, 1].min()  # every line above the brows
    assert forehead[:, int(lm[30, 0])].max() > 0.05  # crossing the face's midline


def test_the_far_side_of_a_turned_face_has_no_fold(mean_landmarks: np.ndarray) -> None:
    lm = mean_landmarks.copy()
    # squeeze the image-right half of the face towards the nose (the far side of a turned face)
    right = lm[:, 0] > lm[30, 0]
    lm[right, 0] = lm[30, 0] + 0.3 * (lm[right, 0] - lm[30, 0])
    eye = float(np.linalg.norm(lm[45] - lm[36]))
    layer = crease_layer(lm, SIZE, _draws(True, False))
    near = (lm[31] + lm[48]) / 2
    assert _mass(layer, near, 0.3 * eye) > 0.5
    assert layer[:, int(np.ceil(lm[30, 0])) + 1 :].sum() == 0.0


def test_dataset_creases_darken_only_the_skin_and_keep_the_labels(ict_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    effects = ("head", "light", "jitter")
    kw = dict(image_size=64, progress=False, effects=effects, seed=4)
    plain = SyntheticFaceDataset(ict_model, 6, **kw)  # type: ignore[arg-type]
    off = SyntheticFaceDataset(ict_model, 6, skin_creases=0.0, **kw)  # type: ignore[arg-type]
    on = SyntheticFaceDataset(ict_model, 6, skin_creases=1.0, **kw)  # type: ignore[arg-type]
    assert off.cache_key() == plain.cache_key()  # at 0 the setting stays out of the key: old caches hold
    assert on.cache_key() != plain.cache_key()
    a, b = plain.generate(list(range(6))), on.generate(list(range(6)))
    np.testing.assert_array_equal(a.params, b.params)
    np.testing.assert_array_equal(a.landmarks, b.landmarks)
    np.testing.assert_array_equal(a.skin, b.skin)
    diff = a.images.astype(np.int16) - b.images.astype(np.int16)
    assert (diff >= -1).all()  # creases only darken (one grey level of rounding)
    assert (np.abs(diff).max(-1)[a.skin == 0] <= 1).all()  # and only on the skin
    changed = [int((np.abs(d).max(-1) > 2).sum()) for d in diff]
    assert sum(c > 0 for c in changed) >= 4, changed  # 70 % folds, 60 % forehead lines: most faces get one
    with pytest.raises(ValueError, match="skin_creases"):
        SyntheticFaceDataset(ict_model, 2, image_size=32, progress=False, skin_creases=1.5)


def test_datamodule_gives_creases_to_the_training_split_only(ict_model) -> None:  # type: ignore[no-untyped-def]
    from msma.data.datamodule import FaceDataModule

    dm = FaceDataModule(
        face_model=ict_model, kind="synthetic", image_size=32, num_samples=8, val_samples=4, synthetic_cache_dir=None,
        skin_creases=0.5, num_workers=0,
    )  # fmt: skip
    assert dm._synthetic_dataset(8, 0, train=True).settings.skin_creases == 0.5
    assert dm._synthetic_dataset(4, 1, train=False).settings.skin_creases == 0.0
    with pytest.raises(ValueError, match="data.skin_creases"):
        FaceDataModule(face_model=ict_model, kind="synthetic", skin_creases=-0.2)
