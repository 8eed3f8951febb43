"""``FaceDataModule``: train/val/test loaders of :class:`~msma.data.batch.FaceBatch` for every dataset kind.

* ``prepare_data`` (Lightning runs it once per node, on local rank 0, before ``setup`` on any rank) fills the
  landmark pseudo-label cache of real-photo folders, so DDP ranks only ever read finished, atomically written
  entries and never race on labelling. ``setup`` then builds the datasets from the cache on every rank.
* Train/val splits of one dataset are deterministic (:func:`~msma.data.datasets.stable_split`), identical on
  every rank; augmentation (:class:`~msma.data.transforms.FaceAugment`) is applied to the training split only.
* Loaders use :func:`~msma.data.batch.collate_samples`; Lightning adds the distributed sampler under DDP.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from msma.data.align import ICT_TEMPLATE_5P_MM, template_from_face_model
from msma.data.batch import FaceSample, collate_samples
from msma.data.datasets import AFLW2000Dataset, FolderDataset, ParamMapper, W300LPDataset, stable_split
from msma.data.prepare import prepare_folder

if TYPE_CHECKING:
    from msma.data.synthetic import SyntheticFaceDataset

log = logging.getLogger(__name__)

KINDS = ("synthetic", "folder", "aflw2000_3d", "300w_lp")
#: Seed offsets of the synthetic validation / test sets (disjoint from the training seed's samples).
VAL_SEED_OFFSET = 1_000_003
TEST_SEED_OFFSET = 2_000_003
Transform = Callable[[FaceSample], FaceSample]


class TransformedSubset(Dataset[FaceSample]):
    """A subset of a dataset with its own sample transform (train augmentation vs. plain validation).

    Args:
        dataset: the base dataset (its own ``transform`` should be None).
        indices: the subset's indices into ``dataset``.
        transform: applied to each sample, or None.
    """

    def __init__(self, dataset: Dataset[FaceSample], indices: Sequence[int], transform: Transform | None) -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> FaceSample:
        sample = self.dataset[self.indices[index]]
        return self.transform(sample) if self.transform is not None else sample


class FaceDataModule(L.LightningDataModule):
    """Loaders for face reconstruction training and evaluation.

    Args:
        kind: training data: ``"synthetic"`` (rendered from ``face_model``), ``"folder"`` (photos +
            pseudo-labels), ``"aflw2000_3d"`` or ``"300w_lp"``.
        root: dataset folder (real-photo kinds).
        face_model: the training face model (required by ``synthetic``; real photos are aligned to its mean
            face's 5-point template, the ICT template when None).
        image_size: crop side S.
        batch_size: per-device batch size.
        num_workers: DataLoader workers.
        pin_memory: DataLoader ``pin_memory``.
        persistent_workers: keep workers between epochs (only with workers).
        val_fraction: held-out fraction of a real-photo training set.
        seed: split and synthetic seed.
        augment: augment the training split (real photos: Deep3D's shift/scale/rotation + colour + blur;
            synthetic: colour + blur only, the renderer already varies the pose).
        flip: allow horizontal flips in the augmentation.
        landmarks: ``folder`` pseudo-label backend (``"dlib"``, ``"fan"``, ``"gt"``).
        landmark_weights: its model file.
        detector: face detector name.
        faces: ``"largest"`` or ``"all"`` faces per photo.
        cache_dir: label cache (None: the default per folder).
        num_samples: synthetic training samples.
        val_samples: synthetic validation samples.
        synthetic_cache_dir: synthetic sample cache (``"auto"``: ``$MSMA_HOME/synthetic``; None: rendered on
            the fly in the loader workers).
        synthetic_renderer: renderer backend of synthetic generation (``"torch"``, ``"nvdiffrast"``, ``"auto"``).
        test_kind: optional test set kind (same names as ``kind``).
        test_root: its folder.
        aflw_crop: ``"gt_box"`` or ``"detect"`` for AFLW2000-3D.
        param_mapper: 3DDFA parameters -> flat coefficients for ``300w_lp`` (see :mod:`msma.data.datasets`).
        augment_kwargs: extra keyword arguments of ``FaceAugment``.
    """

    def __init__(
        self,
        kind: str = "synthetic",
        root: str | os.PathLike[str] | None = None,
        face_model: nn.Module | None = None,
        image_size: int = 224,
        batch_size: int = 32,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = False,
        val_fraction: float = 0.05,
        seed: int = 0,
        augment: bool = True,
        flip: bool = True,
        landmarks: str = "dlib",
        landmark_weights: str | None = None,
        detector: str = "dlib",
        faces: str = "largest",
        cache_dir: str | None = None,
        num_samples: int = 10000,
        val_samples: int = 256,
        synthetic_cache_dir: str | None = "auto",
        synthetic_renderer: str = "torch",
        test_kind: str | None = None,
        test_root: str | os.PathLike[str] | None = None,
        aflw_crop: str = "gt_box",
        param_mapper: ParamMapper | None = None,
        augment_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown data kind {kind!r}; use one of {KINDS}")
        if test_kind is not None and test_kind not in KINDS:
            raise ValueError(f"unknown test data kind {test_kind!r}; use one of {KINDS}")
        if kind != "synthetic" and root is None:
            raise ValueError(f"data kind {kind!r} needs a root folder")
        if test_kind not in (None, "synthetic") and test_root is None:
            raise ValueError(f"test data kind {test_kind!r} needs a test_root folder")
        if faces not in ("all", "largest"):
            raise ValueError(f"faces must be 'all' or 'largest', got {faces!r}")
        if aflw_crop not in ("gt_box", "detect"):
            raise ValueError(f"aflw_crop must be 'gt_box' or 'detect', got {aflw_crop!r}")
        if "synthetic" in (kind, test_kind) and face_model is None:
            raise ValueError("synthetic data needs the face model")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
        self.kind = kind
        self.root = None if root is None else str(root)
        self.face_model = face_model
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.augment = augment
        self.flip = flip
        self.landmarks = landmarks
        self.landmark_weights = landmark_weights
        self.detector = detector
        self.faces = faces
        self.cache_dir = cache_dir
        self.num_samples = int(num_samples)
        self.val_samples = int(val_samples)
        if synthetic_cache_dir == "auto":
            from msma.utils.home import msma_home

            synthetic_cache_dir = str(msma_home() / "synthetic")
        self.synthetic_cache_dir = synthetic_cache_dir
        self.synthetic_renderer = synthetic_renderer
        self.test_kind = test_kind
        self.test_root = None if test_root is None else str(test_root)
        self.aflw_crop = aflw_crop
        self.param_mapper = param_mapper
        self.augment_kwargs = dict(augment_kwargs or {})
        # Real photos are aligned to the training model's own mean face (as inference and evaluation do).
        self.template = template_from_face_model(face_model) if face_model is not None else ICT_TEMPLATE_5P_MM  # type: ignore[arg-type]
        self.train_set: Dataset[FaceSample] | None = None
        self.val_set: Dataset[FaceSample] | None = None
        self.test_set: Dataset[FaceSample] | None = None

    # ----------------------------------------------------------------------------------------- preparation
    def prepare_data(self) -> None:
        """Fills label caches (and the synthetic cache) once per node so ranks never race on them."""
        if self.synthetic_cache_dir is not None:
            specs = []
            if self.kind == "synthetic":
                specs += [(self.num_samples, self.seed), (self.val_samples, self.seed + VAL_SEED_OFFSET)]
            if self.test_kind == "synthetic":
                specs.append((self.val_samples, self.seed + TEST_SEED_OFFSET))
            for num, seed in specs:
                self._synthetic_dataset(num, seed).ensure_generated()
        for kind, root in ((self.kind, self.root), (self.test_kind, self.test_root)):
            if kind == "folder" and root is not None and self.landmarks != "gt":
                run = prepare_folder(
                    root,
                    landmarks=self.landmarks,
                    detector=self.detector,
                    cache_dir=self.cache_dir,
                    weights=self.landmark_weights,
                    faces=self.faces,  # type: ignore[arg-type]
                )
                log.info("labelled %s:\n%s", root, run.summary())
            elif kind == "aflw2000_3d" and root is not None and self.aflw_crop == "detect":
                # Building the dataset fills its detection cache.
                AFLW2000Dataset(
                    root,
                    crop="detect",
                    image_size=self.image_size,
                    landmarks=self.landmarks,
                    detector=self.detector,
                    landmark_weights=self.landmark_weights,
                    cache_dir=self.cache_dir,
                )

    # ------------------------------------------------------------------------------------------- datasets
    def _augmentation(self, geometric: bool = True) -> Transform | None:
        """The training augmentation; ``geometric=False`` (synthetic data) keeps pose coefficients exact."""
        if not self.augment:
            return None
        from msma.data.transforms import FaceAugment

        kwargs: dict[str, Any] = {"image_size": self.image_size, "flip": self.flip, "geometric": geometric}
        kwargs.update(self.augment_kwargs)
        return FaceAugment(**kwargs)

    def _synthetic_dataset(self, num_samples: int, seed: int) -> SyntheticFaceDataset:
        from msma.data.synthetic import SyntheticFaceDataset

        return SyntheticFaceDataset(
            self.face_model,  # type: ignore[arg-type]
            num_samples=num_samples,
            seed=seed,
            image_size=self.image_size,
            cache_dir=self.synthetic_cache_dir,
            renderer_backend=self.synthetic_renderer,
        )

    def _synthetic(self, num_samples: int, seed: int, transform: Transform | None) -> Dataset[FaceSample]:
        dataset = self._synthetic_dataset(num_samples, seed)
        return TransformedSubset(dataset, range(len(dataset)), transform) if transform is not None else dataset

    def _real(self, kind: str, root: str) -> Dataset[FaceSample]:
        if kind == "folder":
            return FolderDataset(
                root,
                landmarks=self.landmarks,
                faces=self.faces,  # type: ignore[arg-type]
                detector=self.detector,
                landmark_weights=self.landmark_weights,
                cache_dir=self.cache_dir,
                image_size=self.image_size,
                template=self.template,
            )
        if kind == "aflw2000_3d":
            return AFLW2000Dataset(
                root,
                crop=self.aflw_crop,  # type: ignore[arg-type]
                image_size=self.image_size,
                landmarks=self.landmarks,
                detector=self.detector,
                landmark_weights=self.landmark_weights,
                cache_dir=self.cache_dir,
                template=self.template,
            )
        if kind == "300w_lp":
            return W300LPDataset(
                root, image_size=self.image_size, template=self.template, param_mapper=self.param_mapper
            )
        raise ValueError(f"{kind!r} is not a real-photo dataset kind")

    def setup(self, stage: str | None = None) -> None:
        """Builds the datasets for ``stage`` (``"fit"``, ``"validate"``, ``"test"``, ``"predict"`` or None)."""
        if stage in (None, "fit", "validate") and self.train_set is None:
            if self.kind == "synthetic":
                # Synthetic data already varies pose, translation and scale: colour/blur (and flips if enabled) only,
                # so the coefficients stay exact (a flip drops a sample's params; see docs/synthetic.md).
                self.train_set = self._synthetic(self.num_samples, self.seed, self._augmentation(geometric=False))
                self.val_set = self._synthetic(self.val_samples, self.seed + VAL_SEED_OFFSET, None)
            else:
                assert self.root is not None
                full = self._real(self.kind, self.root)
                if len(full) == 0:  # type: ignore[arg-type]
                    skipped = getattr(full, "skip_counts", {})
                    raise ValueError(f"{self.root}: no usable training samples (skipped: {dict(skipped) or 'none'})")
                train_idx, val_idx = stable_split(len(full), self.val_fraction, self.seed)  # type: ignore[arg-type]
                self.train_set = TransformedSubset(full, train_idx, self._augmentation())
                self.val_set = TransformedSubset(full, val_idx, None)
                log.info("%s: %d training / %d validation samples", self.root, len(train_idx), len(val_idx))
        if stage in (None, "test", "predict") and self.test_set is None and self.test_kind is not None:
            if self.test_kind == "synthetic":
                self.test_set = self._synthetic(self.val_samples, self.seed + TEST_SEED_OFFSET, None)
            else:
                assert self.test_root is not None
                self.test_set = self._real(self.test_kind, self.test_root)

    # -------------------------------------------------------------------------------------------- loaders
    def _loader(self, dataset: Dataset[FaceSample] | None, train: bool, name: str) -> DataLoader[Any]:
        if dataset is None:
            raise RuntimeError(f"no {name} dataset: call setup() first (or configure test_kind for testing)")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train and len(dataset) > self.batch_size,  # type: ignore[arg-type]
            num_workers=self.num_workers,
            collate_fn=collate_samples,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader[Any]:
        return self._loader(self.train_set, True, "training")

    def val_dataloader(self) -> DataLoader[Any]:
        return self._loader(self.val_set, False, "validation")

    def test_dataloader(self) -> DataLoader[Any]:
        return self._loader(self.test_set, False, "test")

    def cache_paths(self) -> list[Path]:
        """Label cache folders this module uses (for logging / cleanup)."""
        from msma.data.prepare import default_cache_dir

        out = []
        for kind, root in ((self.kind, self.root), (self.test_kind, self.test_root)):
            if kind in ("folder", "aflw2000_3d") and root is not None:
                out.append(Path(self.cache_dir) if self.cache_dir else default_cache_dir(root))
        return out
