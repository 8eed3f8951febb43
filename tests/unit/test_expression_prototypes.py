"""FACS-coded prototype expressions in the synthetic prior (``expression_prototypes``; msma.data.synthetic.sampling)."""

from __future__ import annotations

import pytest
import torch

from msma.data.datamodule import FaceDataModule
from msma.data.synthetic import SamplingSettings, SyntheticFaceDataset, sample_params_with
from msma.data.synthetic.prototypes import EXPRESSION_PROTOTYPES
from msma.data.synthetic.sampling import _GAZE_BASES, _expression_structure

N = 240


def _draw(model, fraction: float, n: int = N) -> list:  # type: ignore[no-untyped-def]
    settings = SamplingSettings(expression_prototypes=fraction)
    return [sample_params_with(model, 1, torch.Generator().manual_seed(1000 + k), settings) for k in range(n)]


def _bases(model) -> dict[str, list[int]]:  # type: ignore[no-untyped-def]
    structure = _expression_structure(tuple(model.exp_names))
    assert structure is not None
    return structure[0]


def _matching_prototype(model, exp: torch.Tensor) -> str | None:  # type: ignore[no-untyped-def]
    """The prototype whose shapes are exactly the active non-gaze shapes of ``exp``, within its weight range."""
    bases = _bases(model)
    active = {b for b, idx in bases.items() if float(exp[idx].max()) > 0}
    for name, shapes in EXPRESSION_PROTOTYPES.items():
        if active != set(shapes):
            continue
        ok = True
        for base, weight in shapes.items():
            values = [float(exp[i]) for i in bases[base] if float(exp[i]) > 0]
            lo, hi = weight * 0.35 * 0.8 - 1e-6, min(1.0, weight * 1.2) + 1e-6
            ok &= all(lo <= v <= hi for v in values)
            if name == "contempt":
                ok &= len(values) == 1  # one side only
        if ok:
            return name
    return None


def test_prototype_table_names_real_ict_shapes(ict_model) -> None:  # type: ignore[no-untyped-def]
    bases = _bases(ict_model)
    for name, shapes in EXPRESSION_PROTOTYPES.items():
        assert set(shapes) <= set(bases), (name, set(shapes) - set(bases))
        assert not set(shapes) & set(_GAZE_BASES)
        assert all(0.0 < w <= 1.0 for w in shapes.values())


def test_every_expressive_sample_is_a_prototype_at_fraction_one(ict_model) -> None:  # type: ignore[no-untyped-def]
    samples = _draw(ict_model, 1.0)
    found: dict[str, int] = {}
    neutral = 0
    for p in samples:
        exp = p.exp[0]
        bases = _bases(ict_model)
        if not any(float(exp[idx].max()) > 0 for idx in bases.values()):
            neutral += 1
            continue
        name = _matching_prototype(ict_model, exp)
        assert name is not None, {ict_model.exp_names[i]: round(float(exp[i]), 2) for i in torch.nonzero(exp)[:, 0]}
        found[name] = found.get(name, 0) + 1
    assert neutral < 0.2 * N  # neutral_fraction 0.1
    assert set(found) == set(EXPRESSION_PROTOTYPES)  # every prototype drawn
    assert max(found.values()) < 3 * min(found.values()) + 10  # roughly uniform


def test_samples_without_a_prototype_are_the_plain_generator_s(ict_model) -> None:  # type: ignore[no-untyped-def]
    plain, half = _draw(ict_model, 0.0), _draw(ict_model, 0.5)
    same = sum(all(torch.equal(x, y) for (_, x), (_, y) in zip(a.items(), b.items())) for a, b in zip(plain, half))
    prototypes = sum(_matching_prototype(ict_model, b.exp[0]) is not None for b in half)
    # Each sample either equals the plain generator's (no prototype drawn) or holds a prototype.
    assert same + prototypes >= N - 2  # a random combination can coincide with a prototype's shapes only by chance
    assert 0.3 * N < prototypes < 0.6 * N  # 0.5 of the 90 % expressive samples
    for a, b in zip(plain, half):  # identity and albedo are drawn before the expression: always the same
        assert torch.equal(a.id, b.id) and torch.equal(a.tex, b.tex)


def test_cache_key_keeps_old_caches_and_names_the_setting(ict_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    plain = SyntheticFaceDataset(ict_model, 4, image_size=32, cache_dir=tmp_path, progress=False)
    explicit = SyntheticFaceDataset(
        ict_model, 4, image_size=32, cache_dir=tmp_path, progress=False, expression_prototypes=0.0
    )
    proto = SyntheticFaceDataset(
        ict_model, 4, image_size=32, cache_dir=tmp_path, progress=False, expression_prototypes=0.5
    )
    assert "expression_prototypes" not in plain.settings_dict()["sampling"]  # keys made before the setting hold
    assert plain.cache_key() == explicit.cache_key() != proto.cache_key()
    assert proto.settings_dict()["sampling"]["expression_prototypes"] == 0.5
    with pytest.raises(ValueError, match="expression_prototypes"):
        SamplingSettings(expression_prototypes=1.5)


def _synthetic_datamodule(ict_model, **setting: float) -> FaceDataModule:  # type: ignore[no-untyped-def]
    """A small synthetic datamodule (no cache, training / validation / test splits) with one sampling setting."""
    return FaceDataModule(
        face_model=ict_model,
        kind="synthetic",
        image_size=32,
        num_samples=8,
        val_samples=4,
        test_kind="synthetic",
        synthetic_cache_dir=None,
        num_workers=0,
        **setting,
    )


def test_datamodule_gives_prototypes_to_the_training_split_only(ict_model) -> None:  # type: ignore[no-untyped-def]
    dm = _synthetic_datamodule(ict_model, expression_prototypes=0.4)
    train = dm._synthetic_dataset(8, 0, train=True)
    val = dm._synthetic_dataset(4, 1, train=False)
    assert train.settings.expression_prototypes == 0.4 and val.settings.expression_prototypes == 0.0
    dm.setup("fit")
    dm.setup("test")
    inner_train = dm.train_set.dataset  # type: ignore[union-attr]
    assert isinstance(inner_train, SyntheticFaceDataset) and inner_train.settings.expression_prototypes == 0.4
    for split in (dm.val_set, dm.test_set):
        assert isinstance(split, SyntheticFaceDataset) and split.settings.expression_prototypes == 0.0
    with pytest.raises(ValueError, match="data.expression_prototypes"):
        FaceDataModule(face_model=ict_model, kind="synthetic", expression_prototypes=-0.1)


def test_datamodule_gives_neutral_fraction_to_the_training_split_only(ict_model) -> None:  # type: ignore[no-untyped-def]
    dm = _synthetic_datamodule(ict_model, neutral_fraction=0.4)
    train = dm._synthetic_dataset(8, 0, train=True)
    val = dm._synthetic_dataset(4, 1, train=False)
    assert train.settings.neutral_fraction == 0.4 and val.settings.neutral_fraction == 0.1
    assert train.settings_dict()["sampling"]["neutral_fraction"] == 0.4  # a different training cache
    with pytest.raises(ValueError, match="neutral_fraction"):
        FaceDataModule(face_model=ict_model, kind="synthetic", neutral_fraction=1.5)


def test_blendshape_only_settings_are_refused_for_a_pca_model(synthetic_bfm_dir) -> None:  # type: ignore[no-untyped-def]
    """BFM's expressions are PCA coefficients: a neutral fraction or prototypes would be ignored, so they raise."""
    from msma.face_model.bfm import load_bfm_arrays
    from msma.face_model.model import FaceModel

    bfm = FaceModel(load_bfm_arrays(synthetic_bfm_dir))
    plain = SyntheticFaceDataset(bfm, 2, image_size=32, progress=False, neutral_fraction=0.1)  # the default: fine
    assert plain.settings.neutral_fraction == 0.1
    for setting in ({"neutral_fraction": 0.4}, {"expression_prototypes": 0.5}):
        with pytest.raises(ValueError, match=f"PCA expressions.*{next(iter(setting))}"):
            SyntheticFaceDataset(bfm, 2, image_size=32, progress=False, **setting)  # type: ignore[arg-type]


def test_prototypes_are_refused_for_blendshapes_without_arkit_names(synthetic_bfm_dir) -> None:  # type: ignore[no-untyped-def]
    """A blendshape model whose shapes carry no ARKit names (here the synthetic BFM's basis relabelled as blendshapes
    ``bs0``, ``bs1``, ...) can take a neutral fraction, but not prototypes, which name the shapes they move."""
    import dataclasses

    from msma.face_model.bfm import load_bfm_arrays
    from msma.face_model.model import FaceModel

    arrays = load_bfm_arrays(synthetic_bfm_dir)
    names = tuple(f"bs{i}" for i in range(len(arrays.exp_names)))
    generic = FaceModel(dataclasses.replace(arrays, exp_kind="blendshape", exp_names=names))
    assert (
        SyntheticFaceDataset(generic, 2, image_size=32, progress=False, neutral_fraction=0.4).settings.neutral_fraction
        == 0.4
    )
    with pytest.raises(ValueError, match="expression_prototypes=0.5 needs ARKit-named"):
        SyntheticFaceDataset(generic, 2, image_size=32, progress=False, expression_prototypes=0.5)
