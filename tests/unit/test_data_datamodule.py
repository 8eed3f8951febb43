"""FaceDataModule and DataConfig: splits, loaders, prepare_data filling the cache once."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from msma.data.batch import FaceBatch
from msma.data.config import DataConfig, build_datamodule
from msma.data.datamodule import FaceDataModule
from msma.data.subset import TransformedSubset


def _faces68_copy(testdata: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in (testdata / "faces68").iterdir():
        if f.suffix in (".jpg", ".ppm", ".pts"):
            shutil.copy(f, dst / f.name)
    return dst


def test_data_config_is_a_structured_schema() -> None:
    schema = OmegaConf.structured(DataConfig)
    assert schema.kind == "synthetic" and schema.image_size == 224 and schema.batch_size == 32
    merged = OmegaConf.merge(schema, {"kind": "folder", "root": "/x", "cache_dir": None})
    assert merged.root == "/x"
    with pytest.raises(Exception, match="batch_sise"):
        OmegaConf.merge(schema, {"batch_sise": 3})
    with pytest.raises(Exception, match="image_size"):
        OmegaConf.merge(schema, {"image_size": "big"})


def test_folder_gt_datamodule(testdata: Path, tmp_path: Path) -> None:
    root = _faces68_copy(testdata, tmp_path / "faces")
    cfg = DataConfig(kind="folder", root=str(root), landmarks="gt", batch_size=2, num_workers=0, val_fraction=0.34)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    assert isinstance(dm.train_set, TransformedSubset) and isinstance(dm.val_set, TransformedSubset)
    assert len(dm.train_set) == 2 and len(dm.val_set) == 1
    assert set(dm.train_set.indices).isdisjoint(dm.val_set.indices)
    assert dm.train_set.transform is not None and dm.val_set.transform is None  # augmentation on train only
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, FaceBatch) and batch.image.shape == (2, 3, 224, 224)
    assert batch.landmark_valid.all() and batch.crop_to_image.shape == (2, 3, 3)
    val = next(iter(dm.val_dataloader()))
    assert val.image.shape == (1, 3, 224, 224)
    with pytest.raises(RuntimeError, match="no test dataset"):
        dm.test_dataloader()


def test_prepare_data_fills_the_cache_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import skimage.data

    photo = skimage.data.astronaut()
    root = tmp_path / "photos"
    root.mkdir()
    Image.fromarray(photo).save(root / "a.png")
    Image.fromarray(photo[:, ::-1]).save(root / "b.png")
    Image.fromarray(np.full((64, 64, 3), 50, np.uint8)).save(root / "blank.png")
    dm = FaceDataModule(
        kind="folder", root=root, cache_dir=str(tmp_path / "cache"), batch_size=1, num_workers=0, val_fraction=0.0
    )
    dm.prepare_data()
    entries = sorted((tmp_path / "cache").rglob("*.json"))
    assert len([e for e in entries if e.name != "paths.json"]) == 3

    # setup() on the ranks only reads: labelling again would be a bug (and a race under DDP).
    import msma.data.cache as cache_mod

    def no_labelling(*args: object, **kwargs: object) -> None:
        raise AssertionError("setup() recomputed a label")

    monkeypatch.setattr(cache_mod, "label_image", no_labelling)
    dm.setup("fit")
    assert dm.train_set is not None and len(dm.train_set) == 2  # the blank image is skipped
    batch = next(iter(dm.train_dataloader()))
    assert batch.image.shape == (1, 3, 224, 224) and torch.isfinite(batch.landmarks).all()


def test_benchmark_test_sets(testdata: Path, tmp_path: Path) -> None:
    dm = FaceDataModule(
        kind="300w_lp",
        root=testdata / "300w_lp",
        test_kind="aflw2000_3d",
        test_root=testdata / "aflw2000_3d",
        batch_size=2,
        num_workers=0,
        val_fraction=0.0,
        augment=False,
    )
    dm.prepare_data()
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch.landmarks_3d is not None and batch.landmarks_3d.shape == (2, 68, 3)
    np.testing.assert_allclose(batch.yaw.numpy(), [0.939, -54.685], atol=1e-3)
    dm.setup("fit")
    train = next(iter(dm.train_dataloader()))
    assert train.image.shape == (1, 3, 224, 224) and train.params is None


def test_loader_workers_pickle_the_dataset(testdata: Path, tmp_path: Path) -> None:
    root = _faces68_copy(testdata, tmp_path / "faces")
    dm = FaceDataModule(kind="folder", root=root, landmarks="gt", batch_size=3, num_workers=1, val_fraction=0.0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.image.shape == (3, 3, 224, 224)


def test_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "a.jpg").write_bytes(b"")
    dm = FaceDataModule(kind="folder", root=tmp_path / "p", landmarks="gt", num_workers=0)
    with pytest.raises(ValueError, match=r"no usable training samples.*zero_byte"):
        dm.setup("fit")


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="unknown data kind"):
        FaceDataModule(kind="celeba")
    with pytest.raises(ValueError, match="needs a root"):
        FaceDataModule(kind="folder")
    with pytest.raises(ValueError, match="face model"):
        FaceDataModule(kind="synthetic")
    with pytest.raises(ValueError, match="test_root"):
        FaceDataModule(kind="folder", root="/x", test_kind="aflw2000_3d")
    with pytest.raises(ValueError, match="faces"):
        FaceDataModule(kind="folder", root="/x", faces="some")
    with pytest.raises(ValueError, match=r"data.synthetic_workers must be >= 1 .*got 0"):
        FaceDataModule(kind="folder", root="/x", synthetic_workers=0)


def test_synthetic_kind(ict_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = DataConfig(
        kind="synthetic",
        image_size=64,
        batch_size=2,
        num_workers=0,
        num_samples=4,
        val_samples=2,
        flip=False,
        synthetic_cache_dir=str(tmp_path / "syn"),
    )
    dm = build_datamodule(cfg, ict_model)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.image.shape == (2, 3, 64, 64) and batch.params is not None and batch.params_valid.all()
    # No loss reads ground-truth vertices: the training split leaves them out; the held-out splits carry them
    # (the vertex metrics), equal to the face model's posed shape of the stored coefficients.
    assert batch.vertices is None
    assert dm.train_set is not None and getattr(dm.train_set, "transform", None) is not None
    val = next(iter(dm.val_dataloader()))
    assert val.image.shape == (2, 3, 64, 64) and val.vertices is not None and val.params is not None
    p = ict_model.layout.split(val.params)
    posed = ict_model.transform(ict_model.shape(p.id, p.exp), p.angles, p.trans)
    assert torch.allclose(val.vertices, posed, atol=1e-3)
    # The training order is a function of (seed, epoch) only.
    from msma.data.sampler import EpochSeededSampler

    sampler = dm.train_dataloader().sampler
    assert isinstance(sampler, EpochSeededSampler)
    sampler.set_epoch(3)
    first = list(sampler)
    sampler.set_epoch(4)
    assert list(sampler) != first or len(first) < 3
    sampler.set_epoch(3)
    # The augmented synthetic train set seeds each sample's augmentation by epoch: the sampler yields epoch keys
    # (epoch * 4 + index), and the same key gives the same augmented sample.
    assert list(sampler) == first and sorted(first) == list(range(12, 16))
    assert sampler.epoch_keys and dm.train_set.seed is not None
    a, b = dm.train_set[first[0]], dm.train_set[first[0]]
    assert torch.equal(a.image, b.image) and torch.equal(a.landmarks, b.landmarks)


def test_heldout_split_is_the_test_split_else_validation(ict_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from msma.data.datamodule import TEST_SEED_OFFSET, VAL_SEED_OFFSET

    cfg = DataConfig(
        image_size=32, batch_size=2, num_workers=0, num_samples=2, val_samples=3, synthetic_cache_dir=str(tmp_path)
    )
    loader, split = FaceDataModule(cfg, ict_model).heldout_dataloader()
    assert split == "validation" and loader.dataset.seed == VAL_SEED_OFFSET  # type: ignore[attr-defined]
    assert [b.batch_size for b in loader] == [2, 1]  # every face, in order, no shuffling
    loader, split = FaceDataModule(cfg, ict_model, test_kind="synthetic", seed=5).heldout_dataloader(limit=2)
    assert split == "test" and len(loader.dataset) == 2  # type: ignore[arg-type]
    assert loader.dataset.dataset.seed == 5 + TEST_SEED_OFFSET  # type: ignore[attr-defined]


def test_real_photos_aligned_to_the_training_model(ict_model, testdata: Path) -> None:  # type: ignore[no-untyped-def]
    from msma.data.align import template_from_face_model

    tmpl = template_from_face_model(ict_model) * 1.1  # stand-in for another model's mean face
    dm = FaceDataModule(kind="300w_lp", root=testdata / "300w_lp", face_model=ict_model, num_workers=0)
    np.testing.assert_allclose(dm.template, template_from_face_model(ict_model))
    dm.template = tmpl
    dm.setup("fit")
    assert dm.train_set is not None
    np.testing.assert_allclose(dm.train_set.dataset.template, tmpl)  # type: ignore[attr-defined]


def test_flip_params_choose_the_coefficients_a_flipped_sample_keeps(ict_model) -> None:  # type: ignore[no-untyped-def]
    """``data.flip_params``: ``pose`` (the default) gives the augmentation no coefficient mirror, ``mirror`` the face
    model's (built once); no flips, no mirror; an unknown value is refused naming the key."""
    from msma.data.config import validate_data_config

    pose = FaceDataModule(DataConfig(image_size=64, num_workers=0), ict_model)._augmentation(geometric=False)
    assert pose is not None and pose.mirror is None and pose.layout == ict_model.layout
    dm = FaceDataModule(DataConfig(image_size=64, num_workers=0, flip_params="mirror"), ict_model)
    aug = dm._augmentation(geometric=False)
    assert aug is not None and aug.mirror is not None
    assert dm._augmentation(geometric=False).mirror is aug.mirror  # built once per datamodule
    assert aug.mirror.residual["exp"] < 0.03  # ICT-FaceKit's blendshapes map onto each other
    unflipped = FaceDataModule(DataConfig(image_size=64, flip=False, flip_params="mirror"), ict_model)
    assert unflipped._augmentation(geometric=False).mirror is None
    with pytest.raises(ValueError, match="data.flip_params"):
        validate_data_config(DataConfig(flip_params="both"), has_face_model=True)
