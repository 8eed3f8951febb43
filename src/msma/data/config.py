"""``DataConfig``: the Hydra structured-config schema of the ``data`` group, and ``build_datamodule``.

Plain ``@dataclass`` with defaults (OmegaConf types every field, so a misspelled key or a wrong type fails at
compose time). Paths are strings or None; machine-specific paths belong in ``experiments/local/`` or
environment variables, not in committed configs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from msma.data.datamodule import FaceDataModule
    from msma.face_model.model import FaceModel

# OmegaConf 2.3 resolves `Optional[X]` annotations; keep them (not `X | None`) in this schema.
# ruff: noqa: UP045

#: Data kinds of ``data.kind``, ``data.test_kind`` and ``data.sources[].kind``.
KINDS: tuple[str, ...] = ("synthetic", "folder", "aflw2000_3d", "300w_lp")

#: Target names a source may list in ``supervises``: whole targets and the coefficient groups.
SUPERVISION_NAMES: tuple[str, ...] = (
    "landmarks",
    "params",
    "id",
    "exp",
    "tex",
    "angles",
    "sh",
    "trans",
    "vertices",
    "skin_mask",
    "landmarks_3d",
    "dense",
)


@dataclass
class SourceConfig:
    """One training data source of a mixed run (an entry of ``data.sources``).

    Attributes:
        kind: ``"synthetic"``, ``"folder"`` (a photo folder: CelebA, FFHQ, your own), ``"aflw2000_3d"`` (an
            AFLW2000-3D-style folder of ``.jpg`` + ``.mat``) or ``"300w_lp"``.
        root: the folder (not used by ``synthetic``).
        name: the name in logs (``train/<term>/<name>``); None: ``<kind>`` (``<kind>_<i>`` when repeated).
        weight: sampling weight; the sources' weights are normalised to the proportions of each batch stream.
            None: the source's natural proportion (its number of samples). Either every source has a weight or
            none has.
        supervises: the targets this source supervises, among ``landmarks``, ``params`` (every coefficient
            group it has) or single groups ``id``/``exp``/``tex``/``angles``/``sh``/``trans``, ``vertices``,
            ``skin_mask``, ``landmarks_3d``, ``dense`` (MediaPipe's dense landmarks of a photo folder labelled with
            ``mediapipe``); None: everything the source provides. A target the source does not
            provide is never invented (``supervises: [params]`` on a photo folder without fits supervises nothing).
        landmarks: the pseudo-label backend of a ``folder`` source (None: ``data.landmarks``);
            ``"mediapipe+fit"`` reads the coefficients ``msma prepare --fit`` cached (identity, expression and
            albedo groups become pseudo-parameters).
        num_samples: samples of a ``synthetic`` source (None: ``data.num_samples``).
        seed: generation seed of a ``synthetic`` source (None: ``data.seed`` + the source's index).
    """

    kind: str = "folder"
    root: Optional[str] = None
    name: Optional[str] = None
    weight: Optional[float] = None
    supervises: Optional[list[str]] = None
    landmarks: Optional[str] = None
    num_samples: Optional[int] = None
    seed: Optional[int] = None


@dataclass
class DataConfig:
    """Datasets and loaders (see :class:`msma.data.datamodule.FaceDataModule` for the meaning of each field).

    Attributes:
        kind: training data: ``"synthetic"``, ``"folder"``, ``"aflw2000_3d"`` or ``"300w_lp"``.
        root: dataset folder (not used by ``synthetic``).
        image_size: crop side in pixels (Deep3D: 224).
        batch_size: per-device batch size.
        num_workers: DataLoader worker processes.
        pin_memory: DataLoader ``pin_memory``.
        persistent_workers: keep workers alive between epochs (when ``num_workers > 0``).
        val_fraction: fraction of the training set held out for validation (real-photo kinds).
        seed: split / synthetic-generation seed.
        augment: apply :class:`~msma.data.transforms.FaceAugment` to the training split.
        flip: allow horizontal flips in the augmentation.
        flip_params: the coefficients a flipped sample keeps: ``"pose"`` (the mirrored pose alone, the other groups
            masked; the default) or ``"mirror"`` (every group, mapped to the mirror image by the face model's
            :class:`~msma.face_model.mirror.CoefficientMirror`; the pose alone when the mesh is not
            mirror-symmetric).
        color_jitter: colour jitter in the augmentation (msma's addition; Deep3D's augmentation has none).
        blur: Gaussian / motion blur in the augmentation (msma's addition; not in Deep3D).
        randconv: probability that a training image reaches the encoder through a random convolution
            (:mod:`msma.data.randconv`, RandConv with mixing; the losses use the clean image); 0 = off.
        grayscale: probability that a training image reaches the encoder in greyscale (BT.601 luma in all three
            channels, as a black-and-white photo loads; :mod:`msma.data.grayscale`; applied after RandConv; the
            losses use the clean image); 0 = off.
        landmarks: pseudo-label backend of ``folder``: ``"dlib"``, ``"fan"`` or ``"gt"``.
        landmark_weights: model file of that backend (None: located automatically, offline).
        detector: face detector: ``"dlib"``, ``"opencv"`` or ``"dlib+opencv"``.
        faces: ``"largest"`` face per photo or ``"all"``.
        cache_dir: label cache folder (None: ``$MSMA_HOME/labels/<folder>-<hash>``).
        num_samples: synthetic training samples.
        val_samples: synthetic validation samples.
        synthetic_cache_dir: where synthetic samples are generated once and cached (``"auto"``:
            ``$MSMA_HOME/synthetic``; None: rendered on the fly in the loader workers).
        synthetic_renderer: renderer of synthetic generation: ``"torch"``, ``"nvdiffrast"`` or ``"auto"``.
        expression_prototypes: fraction of the expressive synthetic *training* faces whose expression is a
            FACS-coded prototype (smiles, laughter, basic emotions;
            :data:`msma.data.synthetic.prototypes.EXPRESSION_PROTOTYPES`) instead of a random combination of
            blendshapes; the validation and test splits keep the plain prior, so their figures stay comparable. 0:
            off (the default).
        neutral_fraction: fraction of the synthetic *training* faces drawn with a neutral expression (gaze still
            varies; :func:`msma.data.synthetic.sampling.sample_params`); the others draw 1-5 blendshapes. The
            validation and test splits keep the generator's 0.1, so their figures stay comparable.
        skin_creases: fraction of the synthetic *training* faces drawn with static skin creases (forehead lines,
            nasolabial folds; :mod:`msma.data.synthetic.creases`) whatever their expression; validation and test
            keep none. 0: off (the default).
        roll_std_deg / max_roll_deg: head roll of the synthetic *training* faces, degrees: a zero-mean normal of
            this std truncated at +-max (Deep3D's crop keeps the roll, so the network must read it; the validation
            and test splits keep the generator's 6 / 20, so their figures stay comparable).
        synthetic_workers: processes that generate the missing synthetic shards before training (None: one per
            usable core; 1: in the training process). Forked on Linux and for CPU rendering only; the cache is the
            same whichever number (:mod:`msma.data.synthetic.parallel`).
        test_kind: held-out test set: None, ``"aflw2000_3d"``, ``"folder"``, ``"300w_lp"`` or ``"synthetic"``.
        test_root: its folder.
        aflw_crop: AFLW2000-3D crop: ``"gt_box"`` (benchmark protocol) or ``"detect"``.
        w300lp_landmarks: 300W-LP's folder of 3D-convention landmark files (``<SUBSET>/<name>_pts.mat``, key
            ``pts_3d``), relative to the 300W-LP root or absolute; an image with such a file uses them as its
            landmark target and alignment input, others ``pt2d``. None: always ``pt2d`` (docs/data.md).
        sources: a mixed-source run (:class:`SourceConfig` per source; ``kind``/``root`` are then unused). Empty:
            the single source ``kind``/``root`` (today's runs, unchanged).
        epoch_samples: training samples per epoch of a mixed run (None: the sum of the sources' sizes).
    """

    kind: str = "synthetic"
    root: Optional[str] = None
    image_size: int = 224
    batch_size: int = 32
    num_workers: int = 4
    pin_memory: bool = True
    persistent_workers: bool = False
    val_fraction: float = 0.05
    seed: int = 0
    augment: bool = True
    flip: bool = True
    flip_params: str = "pose"
    color_jitter: bool = True
    blur: bool = True
    randconv: float = 0.0
    grayscale: float = 0.0
    landmarks: str = "dlib"
    landmark_weights: Optional[str] = None
    detector: str = "dlib"
    faces: str = "largest"
    cache_dir: Optional[str] = None
    num_samples: int = 10000
    val_samples: int = 256
    synthetic_cache_dir: Optional[str] = "auto"
    synthetic_renderer: str = "torch"
    expression_prototypes: float = 0.0
    neutral_fraction: float = 0.1
    skin_creases: float = 0.0
    roll_std_deg: float = 6.0
    max_roll_deg: float = 20.0
    synthetic_workers: Optional[int] = None
    test_kind: Optional[str] = None
    test_root: Optional[str] = None
    aflw_crop: str = "gt_box"
    w300lp_landmarks: Optional[str] = "landmarks"
    sources: list[SourceConfig] = field(default_factory=list)
    epoch_samples: Optional[int] = None

    def source_list(self) -> list[SourceConfig]:
        """The configured sources: ``sources``, or the single source ``kind``/``root``."""
        if self.sources:
            return list(self.sources)
        return [SourceConfig(kind=self.kind, root=self.root, name=self.kind, landmarks=self.landmarks)]

    def source_names(self) -> list[str]:
        """Unique names of :meth:`source_list` (``name``, else ``kind``, suffixed with the index when repeated)."""
        sources = self.source_list()
        kinds = [s.kind for s in sources]
        names = []
        for i, s in enumerate(sources):
            names.append(s.name or (s.kind if kinds.count(s.kind) == 1 else f"{s.kind}_{i}"))
        if len(set(names)) != len(names):
            raise ValueError(f"data.sources names must be unique, got {names}")
        return names


def check_supervises(supervises: Sequence[str] | None, where: str) -> None:
    """Raises ``ValueError`` naming ``where`` when ``supervises`` lists an unknown target."""
    if supervises is None:
        return
    unknown = sorted(set(supervises) - set(SUPERVISION_NAMES))
    if unknown:
        raise ValueError(f"{where}: unknown supervision targets {unknown}; known: {list(SUPERVISION_NAMES)}")


def validate_data_config(c: DataConfig, has_face_model: bool) -> None:
    """Raises ``ValueError`` naming the field (``data.<key>`` or ``data.sources[<name>]``) when ``c`` cannot work.

    Args:
        c: the data configuration.
        has_face_model: whether a face model is given (synthetic data needs one).
    """
    if not c.sources and c.kind not in KINDS:
        raise ValueError(f"unknown data kind {c.kind!r}; use one of {KINDS}")
    if c.test_kind is not None and c.test_kind not in KINDS:
        raise ValueError(f"unknown test data kind {c.test_kind!r}; use one of {KINDS}")
    if not c.sources and c.kind != "synthetic" and c.root is None:
        raise ValueError(f"data kind {c.kind!r} needs a root folder")
    if c.test_kind not in (None, "synthetic") and c.test_root is None:
        raise ValueError(f"test data kind {c.test_kind!r} needs a test_root folder")
    if c.synthetic_workers is not None and c.synthetic_workers < 1:
        raise ValueError(f"data.synthetic_workers must be >= 1 (or null: one per core), got {c.synthetic_workers}")
    if c.flip_params not in ("mirror", "pose"):
        raise ValueError(f"data.flip_params must be 'mirror' or 'pose', got {c.flip_params!r}")
    if not 0.0 <= c.expression_prototypes <= 1.0:
        raise ValueError(f"data.expression_prototypes must lie in [0, 1], got {c.expression_prototypes}")
    if not 0.0 <= c.skin_creases <= 1.0:
        raise ValueError(f"data.skin_creases must lie in [0, 1], got {c.skin_creases}")
    if not 0.0 <= c.neutral_fraction <= 1.0:
        raise ValueError(f"data.neutral_fraction must lie in [0, 1], got {c.neutral_fraction}")
    if not (0.0 <= c.roll_std_deg and 0.0 <= c.max_roll_deg <= 90.0):
        raise ValueError(
            f"data.roll_std_deg must be >= 0 and data.max_roll_deg in [0, 90], got {c.roll_std_deg}, {c.max_roll_deg}"
        )
    if c.faces not in ("all", "largest"):
        raise ValueError(f"faces must be 'all' or 'largest', got {c.faces!r}")
    if c.aflw_crop not in ("gt_box", "detect"):
        raise ValueError(f"aflw_crop must be 'gt_box' or 'detect', got {c.aflw_crop!r}")
    names = c.source_names()
    for src, name in zip(c.sources, names):
        where = f"data.sources[{name}]"
        if src.kind not in KINDS:
            raise ValueError(f"{where}: unknown kind {src.kind!r}; use one of {KINDS}")
        if src.kind != "synthetic" and src.root is None:
            raise ValueError(f"{where}: kind {src.kind!r} needs a root folder")
        if src.weight is not None and not (src.weight >= 0 and src.weight < float("inf")):
            raise ValueError(f"{where}: weight must be finite and >= 0, got {src.weight}")
        if src.num_samples is not None and src.num_samples < 1:
            raise ValueError(f"{where}: num_samples must be >= 1, got {src.num_samples}")
        check_supervises(src.supervises, where)
    weighted = [s.weight is not None for s in c.sources]
    if any(weighted) and not all(weighted):
        raise ValueError("data.sources: give every source a weight, or none (natural proportions)")
    if weighted and all(weighted) and sum(float(s.weight or 0.0) for s in c.sources) <= 0:
        raise ValueError("data.sources: the weights must not all be 0")
    if c.epoch_samples is not None and c.epoch_samples < 1:
        raise ValueError(f"data.epoch_samples must be >= 1, got {c.epoch_samples}")
    kinds = [s.kind for s in c.source_list()]
    if ("synthetic" in kinds or c.test_kind == "synthetic") and not has_face_model:
        raise ValueError("synthetic data needs the face model")
    if c.batch_size < 1 or c.num_workers < 0:
        raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {c.batch_size}, {c.num_workers}")


def build_datamodule(cfg: DataConfig, face_model: FaceModel | None = None) -> FaceDataModule:
    """The :class:`~msma.data.datamodule.FaceDataModule` described by ``cfg``.

    Args:
        cfg: the data config.
        face_model: the training face model (needed by ``synthetic``).
    """
    from msma.data.datamodule import FaceDataModule

    return FaceDataModule(cfg, face_model)
