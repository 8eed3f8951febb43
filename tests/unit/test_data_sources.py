"""Mixed-source data: the weighted epoch-seeded sampler, target restriction, and a datamodule mixing synthetic,
photo and 300W-LP samples (the real files under ../shared/testdata)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from msma.data.batch import FaceSample
from msma.data.config import DataConfig, SourceConfig
from msma.data.datamodule import FaceDataModule
from msma.data.sampler import MixedSourceSampler, source_counts
from msma.data.sources import MixedDataset, restrict_targets
from msma.face_model.params import GROUPS


def test_source_counts_follow_the_weights() -> None:
    assert source_counts([100, 10], None, 110) == [100, 10]  # natural proportions
    assert source_counts([100, 10], [1.0, 1.0], 110) == [55, 55]
    assert source_counts([100, 10, 5], [3.0, 1.0, 0.0], 10) == [8, 2, 0]  # 7.5 / 2.5: largest remainder, ties first
    with pytest.raises(ValueError, match="not all 0"):
        source_counts([1, 2], [0.0, 0.0], 3)


def test_sampler_proportions_determinism_and_epochs() -> None:
    sizes = [100, 10]
    for weights, expected in ((None, (100, 10)), ([1.0, 1.0], (55, 55)), ([1.0, 3.0], (28, 82))):
        s = MixedSourceSampler(sizes, weights, seed=3)
        order = list(s)
        counts = Counter(0 if i < 100 else 1 for i in order)
        assert (counts[0], counts[1]) == expected, weights
        assert all(0 <= i < 110 for i in order)
    s = MixedSourceSampler(sizes, None, seed=3)
    first = list(s)
    assert sorted(first) == list(range(110))  # natural proportions: every sample once per epoch
    assert list(MixedSourceSampler(sizes, None, seed=3)) == first  # a function of (seed, epoch) only
    s.set_epoch(1)
    second = list(s)
    assert second != first and sorted(second) == list(range(110))
    assert list(MixedSourceSampler(sizes, None, seed=4)) != first
    # Oversampled source: distinct samples within each permutation cycle.
    over = list(MixedSourceSampler([100, 10], [1.0, 1.0], seed=0, epoch_samples=40))
    small = [i for i in over if i >= 100]
    assert len(small) == 20 and Counter(small).most_common(1)[0][1] == 2


def test_sampler_ranks_take_disjoint_shares() -> None:
    sizes = [7, 13, 5]
    whole = MixedSourceSampler(sizes, None, seed=1).epoch_order()
    shares = [list(MixedSourceSampler(sizes, None, seed=1, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(x) for x in shares] == [9, 9, 9]
    # 25 samples padded to 27 by repeating the first two: otherwise disjoint, together the whole epoch.
    flat = [i for share in shares for i in share]
    assert sorted(set(flat)) == sorted(whole) == list(range(25))
    assert len(flat) - len(set(flat)) == 2


def _sample(params: bool = True) -> FaceSample:
    return FaceSample(
        image=torch.zeros(3, 8, 8),
        landmarks=torch.ones(68, 2),
        crop_to_image=torch.eye(3),
        params=torch.ones(10) if params else None,
        vertices=torch.zeros(5, 3),
        skin_mask=torch.ones(1, 8, 8),
    )


def test_restrict_targets() -> None:
    s = _sample()
    assert restrict_targets(s, None) is s
    r = restrict_targets(s, ["landmarks", "id", "exp"])
    assert r.param_groups == ("id", "exp") and r.vertices is None and r.skin_mask is None
    assert torch.equal(r.landmarks, s.landmarks)
    r = restrict_targets(s, ["params"])
    assert r.param_groups is None and r.params is not None and bool(torch.isnan(r.landmarks).all())
    r = restrict_targets(dataclasses.replace(s, param_groups=("angles",)), ["id"])
    assert r.params is None and r.param_groups is None
    with pytest.raises(ValueError, match="unknown supervision targets"):
        MixedDataset([[s]], ["a"], [["landmark"]])  # type: ignore[list-item]


def test_dense_target_collate_masks_and_restriction() -> None:
    from msma.data.batch import TARGETS, collate_samples

    assert "dense" in TARGETS
    g = torch.Generator().manual_seed(0)
    with_dense = [dataclasses.replace(_sample(), dense=torch.rand(478, 3, generator=g)) for _ in range(2)]
    plain = _sample(params=False)
    # Every sample has it: stacked, no flags (all rows valid).
    both = collate_samples(with_dense)
    assert both.dense is not None and both.dense.shape == (2, 478, 3) and both.dense_valid is None
    assert both.target_valid("dense").tolist() == [True, True]
    # Mixed: zero rows and per-sample flags; select() keeps them aligned.
    batch = collate_samples([with_dense[0], plain, with_dense[1]])
    assert batch.dense is not None and batch.dense_valid is not None
    assert batch.target_valid("dense").tolist() == [True, False, True]
    torch.testing.assert_close(batch.dense[2], with_dense[1].dense)
    assert float(batch.dense[1].abs().sum()) == 0.0
    sub = batch.select([1, 2])
    assert sub.target_valid("dense").tolist() == [False, True]
    torch.testing.assert_close(sub.dense[1], with_dense[1].dense)  # type: ignore[index]
    # None has it.
    none = collate_samples([plain, plain])
    assert none.dense is None and none.target_valid("dense").tolist() == [False, False]
    # 478 and 468 points do not collate.
    with pytest.raises(ValueError, match="dense of different shapes"):
        collate_samples([with_dense[0], dataclasses.replace(plain, dense=torch.zeros(468, 3))])
    # supervises: kept when listed (or None), dropped otherwise.
    assert restrict_targets(with_dense[0], ["landmarks", "dense"]).dense is not None
    assert restrict_targets(with_dense[0], None).dense is not None
    assert restrict_targets(with_dense[0], ["landmarks", "params"]).dense is None
    mixed = MixedDataset([[with_dense[0]], [with_dense[1]]], ["a", "b"], [["dense"], ["landmarks"]])  # type: ignore[list-item]
    assert mixed[0].dense is not None and mixed[1].dense is None and mixed[1].source_index == 1


def _photos(testdata: Path, tmp: Path) -> Path:
    """The real photos with their ground-truth 68 points, plus a corrupt photo that must be skipped."""
    root = tmp / "photos"
    shutil.copytree(testdata / "faces68", root)
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (root / "corrupt.pts").write_text((root / "einstein.pts").read_text())
    return root


def _mixed_config(testdata: Path, tmp: Path, weights: tuple[float | None, float | None, float | None]) -> DataConfig:
    return DataConfig(
        image_size=32,
        batch_size=4,
        num_workers=0,
        num_samples=8,
        val_samples=2,
        augment=False,
        val_fraction=0.0,
        synthetic_cache_dir=str(tmp / "synthetic"),
        sources=[
            SourceConfig(kind="synthetic", weight=weights[0]),
            SourceConfig(kind="folder", root=str(_photos(testdata, tmp)), landmarks="gt", weight=weights[1]),
            SourceConfig(kind="300w_lp", root=str(testdata / "300w_lp"), weight=weights[2], name="lp"),
        ],
    )


def test_datamodule_mixes_synthetic_photo_and_300w_lp(ict_model, testdata: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dm = FaceDataModule(_mixed_config(testdata, tmp_path, (None, None, None)), ict_model)
    assert dm.source_names == ["synthetic", "folder", "lp"]
    dm.prepare_data()
    dm.setup("fit")
    train = dm.train_set
    assert isinstance(train, MixedDataset)
    assert train.sizes == [8, 3, 1]  # the corrupt photo is skipped and counted, never loaded
    assert dm.source_skips == {"synthetic": {}, "folder": {"not_an_image": 1}, "lp": {}}
    batches = list(dm.train_dataloader())
    seen = Counter(int(i) for b in batches for i in b.sources())
    assert seen == {0: 8, 1: 3, 2: 1}  # natural proportions: every sample once
    for b in batches:
        src = b.sources()
        syn, lp = src == 0, src == 2
        # Synthetic rows carry every coefficient group, 300W-LP rows the pose (mapped from 3DDFA), photo rows
        # landmarks only; no training row carries ground-truth vertices (no loss reads them).
        assert b.group_valid()[syn].all() and not b.group_valid()[src == 1].any()
        angles_only = torch.tensor([g == "angles" for g in GROUPS])
        assert (b.group_valid()[lp] == angles_only).all()
        assert not b.target_valid("vertices").any()
        assert b.landmark_valid.all()
        for i, s in enumerate(b.source):
            assert ("synthetic" in s) == bool(syn[i])
    # The held-out synthetic rows keep their vertices (the vertex metrics).
    val = next(iter(dm.val_dataloader()))
    assert val.target_valid("vertices").tolist() == (val.sources() == 0).tolist()
    assert bool((val.sources() == 0).any())
    # Weights: the photos and 300W-LP drawn as often as the synthetic faces (repeats within their cycles).
    dm = FaceDataModule(
        dataclasses.replace(_mixed_config(testdata, tmp_path / "w", (1.0, 1.0, 1.0)), epoch_samples=12), ict_model
    )
    dm.prepare_data()
    dm.setup("fit")
    seen = Counter(int(i) for b in dm.train_dataloader() for i in b.sources())
    assert seen == {0: 4, 1: 4, 2: 4}


def test_sources_validation(testdata: Path) -> None:
    with pytest.raises(ValueError, match="every source a weight, or none"):
        FaceDataModule(DataConfig(sources=[SourceConfig(kind="300w_lp", root="x", weight=1.0),
                                           SourceConfig(kind="folder", root="y")]))  # fmt: skip
    with pytest.raises(ValueError, match="needs a root"):
        FaceDataModule(DataConfig(sources=[SourceConfig(kind="folder")]))
    with pytest.raises(ValueError, match="unknown kind"):
        FaceDataModule(DataConfig(sources=[SourceConfig(kind="celeba", root="x")]))
    with pytest.raises(ValueError, match="unknown supervision"):
        FaceDataModule(DataConfig(sources=[SourceConfig(kind="folder", root="x", supervises=["lm"])]))
    with pytest.raises(ValueError, match="names must be unique"):
        DataConfig(sources=[SourceConfig(kind="folder", root="a", name="p"),
                            SourceConfig(kind="folder", root="b", name="p")]).source_names()  # fmt: skip
    # A single-source configuration is a one-source list.
    assert DataConfig(kind="folder", root="r").source_list()[0].root == "r"


def test_prepare_counts_every_source(testdata: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from msma.cli.prepare import cli_main

    photos = _photos(testdata, tmp_path)
    sources = (
        f"data.sources=[{{kind: synthetic, num_samples: 5}}, {{kind: folder, name: photos, root: {photos}, "
        f"landmarks: gt}}, {{kind: 300w_lp, root: {testdata / '300w_lp'}}}]"
    )
    out_json = tmp_path / "report.json"
    assert cli_main(["--config-name", "embedded_mixed", "--no-progress", "--json", str(out_json), sources]) == 0
    printed = capsys.readouterr().out
    assert "[synthetic] synthetic: 5 samples" in printed
    assert f"[photos] folder ({photos}): 3 samples, skipped: not_an_image: 1" in printed
    assert "[300w_lp] 300w_lp" in printed and "1 samples" in printed
    report = json.loads(out_json.read_text())
    assert [(r["name"], r["samples"], r["skipped"]) for r in report] == [
        ("synthetic", 5, {}),
        ("photos", 3, {"not_an_image": 1}),
        ("300w_lp", 1, {}),
    ]
    assert cli_main(["--no-progress"]) == 2  # neither --data nor --config-name


def _similarity_nme(pred: torch.Tensor, target: torch.Tensor) -> float:
    """NME (% of sqrt(w h) of the target box) after the best scale + shift of ``pred`` (no rotation)."""
    p, t = pred.double() - pred.double().mean(0), target.double() - target.double().mean(0)
    s = (p * t).sum() / (p * p).sum()
    box = (t.max(0).values - t.min(0).values).prod().sqrt()
    return float(((s * p - t).norm(dim=1).mean() / box) * 100)


def test_3ddfa_pose_maps_into_the_training_model(ict_model, testdata: Path) -> None:  # type: ignore[no-untyped-def]
    """The mean face posed by the mapped 3DDFA angles lands on the real files' 68 landmarks; the angles read in
    the training convention without the transpose do not."""
    from msma.data.align import template_from_face_model
    from msma.data.datasets import AFLW2000Dataset, W300LPDataset
    from msma.data.threeddfa import PoseParamMapper, threeddfa_angles

    layout = ict_model.layout
    lp = W300LPDataset(
        testdata / "300w_lp", image_size=224, template=template_from_face_model(ict_model),
        param_mapper=PoseParamMapper(layout),
    )  # fmt: skip
    aflw = AFLW2000Dataset(testdata / "aflw2000_3d", image_size=224)
    cases = [(lp[0], lp.records[0].params.pose)] + [(aflw[i], aflw.records[i].params.pose) for i in range(len(aflw))]
    assert lp[0].param_groups == ("angles",) and lp[0].params is not None
    for sample, pose in cases:
        mapped = torch.from_numpy(threeddfa_angles(pose)).float()
        if sample.params is not None:
            assert torch.allclose(layout.split(sample.params[None]).angles[0], mapped)
        nmes = []
        for angles in (mapped, torch.from_numpy(pose[:3]).float()):
            params = layout.zeros(1)
            params = dataclasses.replace(params, angles=angles[None])
            face = ict_model(params, image_size=224)
            nmes.append(_similarity_nme(face.landmarks_2d[0], sample.landmarks))
        assert nmes[0] < 7.0, (sample.source, nmes)
        assert nmes[1] > nmes[0] + 0.5, (sample.source, nmes)


@pytest.mark.parametrize("name", ["msma_lka", "mlanet", "deep3d_r50"])
def test_paper_experiments_compose_the_paper_mix(name: str, testdata: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from msma.config import compose_experiment, to_typed
    from msma.preflight import missing_inputs

    monkeypatch.setenv("MSMA_DATA_ROOT", str(testdata / "faces68"))
    monkeypatch.delenv("MSMA_300WLP_ROOT", raising=False)
    cfg = compose_experiment(name, ["data=photos_300w_lp"])
    data = to_typed(cfg).data
    assert [(s.kind, s.root) for s in data.sources] == [("folder", str(testdata / "faces68")), ("300w_lp", None)]
    assert cfg.face_model.name == "bfm"
    assert any(m.what == "300w_lp data" for m in missing_inputs(cfg))  # named before any work
    monkeypatch.setenv("MSMA_300WLP_ROOT", str(testdata / "300w_lp"))
    cfg = compose_experiment(name, ["data=photos_300w_lp"])
    assert not any("data" in m.what or "photos" in m.what for m in missing_inputs(cfg))


def test_cached_fit_becomes_pseudo_parameters_of_its_face_model(tmp_path: Path) -> None:
    """A photo's cached fit (``msma prepare --fit``) gives id/exp/tex pseudo-parameters, only for the same model."""
    import numpy as np

    from msma.data.cache import FaceLabel
    from msma.data.datasets import FIT_GROUPS, FolderDataset
    from msma.data.detect import FaceBox
    from msma.face_model.params import CoeffLayout

    layout = CoeffLayout(4, 3, 2)
    coeffs = {g: [float(i + 1)] * n for i, (g, n) in enumerate(layout.sizes.items())}
    face = FaceLabel(
        box=FaceBox(0.0, 0.0, 10.0, 10.0),
        landmarks=np.zeros((68, 2), np.float32),
        fit={"coefficients": coeffs, "face_model": "ict-abc"},
    )
    ds = FolderDataset.__new__(FolderDataset)  # only the fit reader; the photo loading is covered elsewhere
    ds.fit_layout, ds.fit_model_tag = layout, "ict-abc"
    flat = ds._fitted_params(face, tmp_path / "p.jpg")
    assert flat is not None
    split = layout.split(flat[None])
    for i, (g, _) in enumerate(layout.sizes.items()):
        expected = float(i + 1) if g in FIT_GROUPS else 0.0  # pose and light of the fit's own crop are not used
        assert torch.all(getattr(split, g) == expected), g
    ds.fit_model_tag = "bfm-xyz"
    assert ds._fitted_params(face, tmp_path / "p.jpg") is None  # another face model's fit
    ds.fit_model_tag = "ict-abc"
    bad = dataclasses.replace(face, fit={"coefficients": {**coeffs, "id": [1.0]}, "face_model": "ict-abc"})
    with pytest.raises(ValueError, match=r"p\.jpg: cached fit id has 1 values"):
        ds._fitted_params(bad, tmp_path / "p.jpg")
