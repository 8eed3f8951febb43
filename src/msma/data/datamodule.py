"""``FaceDataModule``: train/val/test loaders of :class:`~msma.data.batch.FaceBatch` for every dataset kind.

* ``prepare_data`` (Lightning runs it once per node, on local rank 0, before ``setup`` on any rank) fills the
  landmark pseudo-label cache of real-photo folders, so DDP ranks only ever read finished, atomically written
  entries and never race on labelling. ``setup`` then builds the datasets from the cache on every rank.
* Train/val splits of one dataset are deterministic (:func:`~msma.data.datasets.stable_split`), identical on
  every rank; augmentation (:class:`~msma.data.transforms.FaceAugment`) is applied to the training split only.
* Loaders use :func:`~msma.data.batch.collate_samples`; Lightning adds the distributed sampler under DDP.
* Mixed-source runs (``data.sources``): every source is prepared once (photo folders labelled once per folder and
  backend), split on its own, and concatenated in a :class:`~msma.data.sources.MixedDataset` (samples tagged with
  their source and restricted to what it supervises); the training order is a
  :class:`~msma.data.sampler.MixedSourceSampler` (weighted, a function of ``(seed, epoch)``, each DDP rank its
  share). A configuration with ``kind``/``root`` only is the single-source path above, unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Sized
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from msma.data.align import ICT_TEMPLATE_5P_MM, template_from_face_model
from msma.data.batch import FaceSample, collate_samples
from msma.data.config import DataConfig, SourceConfig, validate_data_config
from msma.data.datasets import (
    AFLW2000Dataset,
    FolderDataset,
    W300LPDataset,
    stable_split,
)
from msma.data.prepare import prepare_folder
from msma.data.sampler import EpochSeededSampler, MixedSourceSampler
from msma.data.sources import MixedDataset
from msma.data.subset import Transform, TransformedSubset
from msma.data.threeddfa import ParamMapper, PoseParamMapper
from msma.face_model.model import FaceModel

if TYPE_CHECKING:
    from msma.data.synthetic import SyntheticFaceDataset
    from msma.face_model.mirror import CoefficientMirror

log = logging.getLogger(__name__)

#: Seed offsets of the synthetic validation / test sets (disjoint from the training seed's samples).
VAL_SEED_OFFSET = 1_000_003
TEST_SEED_OFFSET = 2_000_003
#: Added to the data seed for the augmentation seeds (so they differ from the sampler's order seeds).
AUGMENT_SEED_OFFSET = 7919


class FaceDataModule(L.LightningDataModule):
    """Loaders for face reconstruction training and evaluation, described by one :class:`DataConfig`.

    The module owns everything about the data: the training order (:class:`EpochSeededSampler`: a function of
    ``(seed, epoch)``, so a resumed run sees the batches an uninterrupted one would), the pseudo-labelling and the
    synthetic pre-generation (:meth:`prepare_data`), and the choice of the held-out split
    (:meth:`heldout_dataloader`: the test split when one is configured, else the validation split).

    Args:
        config: the data configuration (field meanings: :class:`msma.data.config.DataConfig`).
        face_model: the training face model (required by ``synthetic``; real photos are aligned to its mean
            face's 5-point template, the ICT template when None).
        param_mapper: 3DDFA parameters -> flat coefficients for ``300w_lp`` (see :mod:`msma.data.datasets`);
            None: :class:`~msma.data.threeddfa.PoseParamMapper` (the pose only) when ``face_model`` is given.
        augment_kwargs: extra keyword arguments of ``FaceAugment``.
        **overrides: fields of ``config`` to replace (``FaceDataModule(kind="folder", root=...)`` in tests and
            notebooks); an unknown name raises ``TypeError``.
    """

    def __init__(
        self,
        config: DataConfig | None = None,
        face_model: FaceModel | None = None,
        param_mapper: ParamMapper | None = None,
        augment_kwargs: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        cfg = dataclasses.replace(config or DataConfig(), **overrides)
        if cfg.root is not None:
            cfg = dataclasses.replace(cfg, root=str(cfg.root))
        if cfg.test_root is not None:
            cfg = dataclasses.replace(cfg, test_root=str(cfg.test_root))
        if cfg.sources:
            sources = [s if isinstance(s, SourceConfig) else SourceConfig(**dict(s)) for s in cfg.sources]
            sources = [dataclasses.replace(s, root=None if s.root is None else str(s.root)) for s in sources]
            cfg = dataclasses.replace(cfg, sources=sources)
        if cfg.synthetic_cache_dir == "auto":
            from msma.utils.home import msma_home

            cfg = dataclasses.replace(cfg, synthetic_cache_dir=str(msma_home() / "synthetic"))
        validate_data_config(cfg, has_face_model=face_model is not None)
        self.cfg = cfg
        self.face_model = face_model
        self.param_mapper = param_mapper
        self.augment_kwargs = dict(augment_kwargs or {})
        # Real photos are aligned to the training model's own mean face (as inference and evaluation do).
        self.template = template_from_face_model(face_model) if face_model is not None else ICT_TEMPLATE_5P_MM
        self.train_set: Dataset[FaceSample] | None = None
        self.val_set: Dataset[FaceSample] | None = None
        self.test_set: Dataset[FaceSample] | None = None
        #: seconds :meth:`prepare_data` took in this process (labelling, synthetic generation or verification).
        self.prepare_seconds = 0.0

    # ----------------------------------------------------------------------------------------- preparation
    def prepare_data(self) -> None:
        """Fills label caches and generates the synthetic shards once per node, so ranks never race on them
        and loader workers never render lazily."""
        t_start = time.perf_counter()
        try:
            self._prepare()
        finally:
            self.prepare_seconds += time.perf_counter() - t_start

    @property
    def mixed(self) -> bool:
        """True for a mixed-source configuration (``data.sources`` set)."""
        return bool(self.cfg.sources)

    @property
    def source_names(self) -> list[str]:
        """Names of the training sources, in ``source_index`` order."""
        return self.cfg.source_names()

    def _source_seed(self, index: int, source: SourceConfig) -> int:
        return int(source.seed) if source.seed is not None else self.cfg.seed + index

    def _real_sources(self) -> list[tuple[str, str, str]]:
        """(kind, root, landmark backend) of every real-photo source and of the test set, without repeats."""
        c = self.cfg
        out: list[tuple[str, str, str]] = []
        pairs = [(s.kind, s.root, s.landmarks or c.landmarks) for s in c.source_list()]
        pairs.append((c.test_kind or "", c.test_root, c.landmarks))
        for kind, root, landmarks in pairs:
            if kind not in ("", "synthetic") and root is not None and (kind, root, landmarks) not in out:
                out.append((kind, root, landmarks))
        return out

    def _prepare(self) -> None:
        c = self.cfg
        if c.synthetic_cache_dir is not None:
            specs = []
            if self.mixed:
                for i, src in enumerate(c.sources):
                    if src.kind == "synthetic":
                        seed = self._source_seed(i, src)
                        specs += [
                            (src.num_samples or c.num_samples, seed, f"{src.name or 'synthetic'} train", True),
                            (c.val_samples, seed + VAL_SEED_OFFSET, f"{src.name or 'synthetic'} validation", False),
                        ]
            elif c.kind == "synthetic":
                specs += [
                    (c.num_samples, c.seed, "train", True),
                    (c.val_samples, c.seed + VAL_SEED_OFFSET, "validation", False),
                ]
            if c.test_kind == "synthetic":
                specs.append((c.val_samples, c.seed + TEST_SEED_OFFSET, "test", False))
            if specs:
                from msma.data.synthetic.parallel import generate_shards

                # All splits at once, so that the generation processes stay busy across them.
                t0 = time.perf_counter()
                datasets = [self._synthetic_dataset(num, seed, train=train) for num, seed, _, train in specs]
                generate_shards(datasets, workers=c.synthetic_workers)
                for (_, _, name, _), ds in zip(specs, datasets):
                    log.info("synthetic %s split ready (%s)", name, ds.cache_root)
                log.info("synthetic splits ready in %.1f s", time.perf_counter() - t0)
        for kind, root, landmarks in self._real_sources():
            if kind == "folder" and landmarks != "gt":
                run = prepare_folder(
                    root,
                    landmarks=landmarks,
                    detector=c.detector,
                    cache_dir=c.cache_dir,
                    weights=c.landmark_weights,
                    faces=_faces(c.faces),
                )
                log.info("labelled %s:\n%s", root, run.summary())
            elif kind == "aflw2000_3d" and c.aflw_crop == "detect":
                # Building the dataset fills its detection cache.
                AFLW2000Dataset(
                    root,
                    crop="detect",
                    image_size=c.image_size,
                    landmarks=c.landmarks,
                    detector=c.detector,
                    landmark_weights=c.landmark_weights,
                    cache_dir=c.cache_dir,
                )

    # ------------------------------------------------------------------------------------------- datasets
    def _augmentation(self, geometric: bool = True) -> Transform | None:
        """The training augmentation; ``geometric=False`` (synthetic data) keeps pose coefficients exact."""
        if not self.cfg.augment:
            return None
        from msma.data.transforms import FaceAugment

        c = self.cfg
        kwargs: dict[str, Any] = {
            "image_size": c.image_size,
            "flip": c.flip,
            "geometric": geometric,
            "color_jitter": c.color_jitter,
            "blur": c.blur,
            # The mirrored pose of a flipped sample stays ground truth (msma.data.transforms), and with
            # data.flip_params=mirror every other group too, through the face model's coefficient mirror.
            "layout": None if self.face_model is None else self.face_model.layout,
            "mirror": self._coefficient_mirror if c.flip and c.flip_params == "mirror" else None,
        }
        kwargs.update(self.augment_kwargs)
        return FaceAugment(**kwargs)

    @functools.cached_property
    def _coefficient_mirror(self) -> CoefficientMirror | None:
        """The face model's coefficient mirror (built once), or None without a face model or a symmetric mesh."""
        if self.face_model is None:
            return None
        from msma.face_model.mirror import CoefficientMirror

        return CoefficientMirror.from_face_model(self.face_model)

    def _synthetic_dataset(
        self, num_samples: int, seed: int, vertices: bool = True, train: bool = False
    ) -> SyntheticFaceDataset:
        """A synthetic split; ``train=True`` draws with ``data.expression_prototypes``, ``data.neutral_fraction``,
        ``data.skin_creases`` and ``data.roll_std_deg`` / ``data.max_roll_deg`` (training only)."""
        from msma.data.synthetic import SyntheticFaceDataset

        if self.face_model is None:
            raise ValueError("synthetic data needs the face model")
        # At their defaults these settings leave the generator and its cache key as they were (dataset._sampling_key).
        sampling: dict[str, Any] = {}
        if train:
            for name in ("expression_prototypes", "neutral_fraction", "skin_creases", "roll_std_deg", "max_roll_deg"):
                sampling[name] = getattr(self.cfg, name)
        return SyntheticFaceDataset(
            self.face_model,
            num_samples=num_samples,
            seed=seed,
            image_size=self.cfg.image_size,
            cache_dir=self.cfg.synthetic_cache_dir,
            renderer_backend=self.cfg.synthetic_renderer,
            return_vertices=vertices,
            **sampling,
        )

    def _synthetic(
        self, num_samples: int, seed: int, transform: Transform | None, vertices: bool = True, train: bool = False
    ) -> Dataset[FaceSample]:
        """A synthetic split; ``vertices=False`` leaves out the ground-truth posed vertices (see ``_train_synthetic``)."""
        dataset = self._synthetic_dataset(num_samples, seed, vertices, train=train)
        if transform is None:
            return dataset
        return TransformedSubset(dataset, range(len(dataset)), transform, seed=self.cfg.seed + AUGMENT_SEED_OFFSET)

    def _train_synthetic(self, num_samples: int, seed: int) -> Dataset[FaceSample]:
        """A synthetic training split: colour/blur/flip augmentation, no ground-truth vertices.

        No training loss reads the posed vertices (only the held-out metrics do), and computing them from the stored
        coefficients (a (3N x 180) product per face) was 70 % of a cached sample's loading time.
        """
        return self._synthetic(num_samples, seed, self._augmentation(geometric=False), vertices=False, train=True)

    def _real(
        self, kind: str, root: str, landmarks: str | None = None
    ) -> FolderDataset | AFLW2000Dataset | W300LPDataset:
        c = self.cfg
        if kind == "folder":
            backend = landmarks or c.landmarks
            fits = backend == "mediapipe+fit" and self.face_model is not None
            return FolderDataset(
                root,
                landmarks=backend,
                fit_layout=self.face_model.layout if fits and self.face_model is not None else None,
                fit_model_tag=(
                    f"{self.face_model.name}-{self.face_model.fingerprint()}"
                    if fits and self.face_model is not None
                    else None
                ),
                faces=_faces(c.faces),
                detector=c.detector,
                landmark_weights=c.landmark_weights,
                cache_dir=c.cache_dir,
                image_size=c.image_size,
                template=self.template,
            )
        if kind == "aflw2000_3d":
            return AFLW2000Dataset(
                root,
                crop="detect" if c.aflw_crop == "detect" else "gt_box",
                image_size=c.image_size,
                landmarks=c.landmarks,
                detector=c.detector,
                landmark_weights=c.landmark_weights,
                cache_dir=c.cache_dir,
                template=self.template,
            )
        if kind == "300w_lp":
            mapper = self.param_mapper
            if mapper is None and self.face_model is not None:
                mapper = PoseParamMapper(self.face_model.layout)  # the pose carries over into any face model
            return W300LPDataset(
                root,
                image_size=c.image_size,
                template=self.template,
                param_mapper=mapper,
                landmarks_dir=c.w300lp_landmarks,
            )
        raise ValueError(f"{kind!r} is not a real-photo dataset kind")

    def setup(self, stage: str | None = None) -> None:
        """Builds the datasets for ``stage`` (``"fit"``, ``"validate"``, ``"test"``, ``"predict"`` or None)."""
        c = self.cfg
        if stage in (None, "fit", "validate") and self.train_set is None and self.mixed:
            self._setup_mixed()
        if stage in (None, "fit", "validate") and self.train_set is None:
            if c.kind == "synthetic":
                # Synthetic data already varies pose, translation and scale: colour/blur (and flips if enabled) only,
                # so the coefficients stay exact (a flip drops a sample's params; see docs/synthetic.md).
                self.train_set = self._train_synthetic(c.num_samples, c.seed)
                self.val_set = self._synthetic(c.val_samples, c.seed + VAL_SEED_OFFSET, None)
            else:
                assert c.root is not None
                full = self._real(c.kind, c.root)
                if len(full) == 0:
                    skipped = getattr(full, "skip_counts", {})
                    raise ValueError(f"{c.root}: no usable training samples (skipped: {dict(skipped) or 'none'})")
                train_idx, val_idx = stable_split(len(full), c.val_fraction, c.seed)
                aug = self._augmentation()
                seed = None if aug is None else c.seed + AUGMENT_SEED_OFFSET
                self.train_set = TransformedSubset(full, train_idx, aug, seed=seed)
                self.val_set = TransformedSubset(full, val_idx, None)
                log.info("%s: %d training / %d validation samples", c.root, len(train_idx), len(val_idx))
        if stage in (None, "test", "predict") and self.test_set is None and c.test_kind is not None:
            if c.test_kind == "synthetic":
                self.test_set = self._synthetic(c.val_samples, c.seed + TEST_SEED_OFFSET, None)
            else:
                assert c.test_root is not None
                self.test_set = self._real(c.test_kind, c.test_root)

    def _setup_mixed(self) -> None:
        """Training / validation sets of a mixed-source configuration (one split per source)."""
        c = self.cfg
        names = self.source_names
        trains: list[Dataset[FaceSample]] = []
        vals: list[Dataset[FaceSample]] = []
        #: per source: skipped files by reason (photos / annotations left out when the source was built).
        self.source_skips: dict[str, dict[str, int]] = {}
        for i, (src, name) in enumerate(zip(c.sources, names)):
            if src.kind == "synthetic":
                seed = self._source_seed(i, src)
                trains.append(self._train_synthetic(src.num_samples or c.num_samples, seed))
                vals.append(self._synthetic(c.val_samples, seed + VAL_SEED_OFFSET, None))
                self.source_skips[name] = {}
                continue
            assert src.root is not None
            full = self._real(src.kind, src.root, src.landmarks)
            self.source_skips[name] = dict(getattr(full, "skip_counts", {}))
            if len(full) == 0:
                log.warning("source %s (%s): no usable samples (skipped: %s)", name, src.root, self.source_skips[name])
            train_idx, val_idx = stable_split(len(full), c.val_fraction, c.seed)
            trains.append(TransformedSubset(full, train_idx, self._augmentation()))
            vals.append(TransformedSubset(full, val_idx, None))
            log.info(
                "source %s (%s): %d training / %d validation samples", name, src.root, len(train_idx), len(val_idx)
            )
        supervises = [s.supervises for s in c.sources]
        train = MixedDataset(trains, names, supervises)
        if len(train) == 0:
            raise ValueError(f"no usable training samples in any source (skipped: {self.source_skips})")
        self.train_set = train
        self.val_set = MixedDataset(vals, names, supervises)

    def _train_sampler(self, dataset: Dataset[FaceSample]) -> EpochSeededSampler | MixedSourceSampler:
        c = self.cfg
        if not isinstance(dataset, MixedDataset):
            assert isinstance(dataset, Sized)
            keys = isinstance(dataset, TransformedSubset) and dataset.seed is not None
            return EpochSeededSampler(dataset, c.seed, epoch_keys=keys)
        weights = [s.weight for s in c.sources]
        world, rank = _world()
        return MixedSourceSampler(
            dataset.sizes,
            None if weights[0] is None else [float(w) for w in weights if w is not None],
            c.seed,
            c.epoch_samples,
            num_replicas=world,
            rank=rank,
        )

    # -------------------------------------------------------------------------------------------- loaders
    def _loader(self, dataset: Dataset[FaceSample] | None, train: bool, name: str) -> DataLoader[Any]:
        if dataset is None:
            raise RuntimeError(f"no {name} dataset: call setup() first (or configure test_kind for testing)")
        if not isinstance(dataset, Sized):
            raise TypeError(f"the {name} dataset has no length")
        c = self.cfg
        sampler = self._train_sampler(dataset) if train else None
        size = len(sampler) if sampler is not None else len(dataset)
        return DataLoader(
            dataset,
            batch_size=c.batch_size,
            # The training order is a function of (seed, epoch) only; for one source Lightning swaps in a
            # DistributedSampler (epoch-seeded too) under DDP, a MixedSourceSampler splits itself across ranks.
            sampler=sampler,
            drop_last=train and size > c.batch_size,
            num_workers=c.num_workers,
            collate_fn=collate_samples,
            pin_memory=c.pin_memory and torch.cuda.is_available(),
            persistent_workers=c.persistent_workers and c.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader[Any]:
        return self._loader(self.train_set, True, "training")

    def val_dataloader(self) -> DataLoader[Any]:
        return self._loader(self.val_set, False, "validation")

    def test_dataloader(self) -> DataLoader[Any]:
        return self._loader(self.test_set, False, "test")

    def heldout_dataloader(self, limit: int | None = None) -> tuple[DataLoader[Any], str]:
        """The held-out split every evaluation uses: ``("test", loader)`` when a test split is configured,
        else the validation split; ``limit`` keeps its first samples only.

        Returns:
            (loader, split name ``"test"`` or ``"validation"``).
        """
        if self.cfg.test_kind is not None:
            self.setup("test")
            dataset, split = self.test_set, "test"
        else:
            self.setup("validate")
            dataset, split = self.val_set, "validation"
        if dataset is None:
            raise ValueError("the data configuration has neither a test nor a validation split")
        if hasattr(dataset, "ensure_generated"):
            dataset.ensure_generated()
        if limit is not None and isinstance(dataset, Sized) and limit < len(dataset):
            dataset = Subset(dataset, range(limit))
        return self._loader(dataset, False, split), split

    def cache_paths(self) -> list[Path]:
        """Label cache folders this module uses (for logging / cleanup)."""
        from msma.data.prepare import default_cache_dir

        c = self.cfg
        out: list[Path] = []
        for kind, root, _ in self._real_sources():
            if kind in ("folder", "aflw2000_3d"):
                path = Path(c.cache_dir) if c.cache_dir else default_cache_dir(root)
                if path not in out:
                    out.append(path)
        return out


def _world() -> tuple[int, int]:
    """(world size, rank) of the initialised default process group, else (1, 0)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _faces(value: str) -> Literal["largest", "all"]:
    return "all" if value == "all" else "largest"
