"""One sample and one collated batch, the contract between the datasets and the training module."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from msma.face_model.params import GROUPS, CoeffLayout, FaceParams

#: Supervision target names a sample can carry (``FaceBatch.target_valid``; loss terms and ``supervises``).
TARGETS: tuple[str, ...] = ("landmarks", "params", "vertices", "skin_mask", "landmarks_3d", "dense")


@dataclass(frozen=True)
class FaceSample:
    """One aligned face crop.

    Attributes:
        image: (3, S, S) float32 RGB in [0, 1], the aligned crop (S = 224 by default).
        landmarks: (68, 2) float32 pixel coordinates in the crop (x right, y down, pixel-index units);
            all NaN when no landmarks are known.
        crop_to_image: (3, 3) float32 affine map from crop pixel coordinates to the original image's.
        params: flat ground-truth coefficients in the training face model's layout, or None.
        vertices: (N, 3) ground-truth posed vertices in mm (synthetic data), or None.
        landmarks_3d: (68, 3) ground-truth 3D landmarks of the original image (AFLW2000-3D ``pt3d_68``
            transposed, original-image pixels; x, y, z), or None.
        yaw: ground-truth yaw in degrees, NaN when unknown.
        skin_mask: (1, S, S) float32 skin probability / face mask in [0, 1], or None (computed by the loss).
        source: the file this sample came from (or ``"synthetic:<seed>:<index>"``).
        param_groups: the coefficient groups of ``params`` that are ground truth (names of
            :data:`~msma.face_model.params.GROUPS`); None: every group (when ``params`` is set). Pseudo-parameters
            fitted on a photo, for instance, carry ``("id", "exp", "tex")`` only.
        source_index: index of the configured data source this sample came from (``data.sources``; 0 for a
            single-source run).
        dense: (K, 3) float32 dense MediaPipe landmarks (K = 478: 468 mesh vertices + 10 iris points, or 468) in
            crop pixels: x, y through the same transform as ``landmarks`` (alignment, augmentation), z
            MediaPipe's relative depth scaled with the crop; NaN rows where a point is unknown (the iris after a
            flip). None: the sample has no dense target.
        replaces: for a stand-in, the item it replaces and why that one could not be loaded (``"<file>: <reason>"``,
            set by :class:`~msma.data.dataset_base.RobustDataset` so a training batch stays full); empty for a
            genuine sample. Evaluations leave stand-ins out (:meth:`FaceBatch.genuine`).
    """

    image: Tensor
    landmarks: Tensor
    crop_to_image: Tensor
    params: Tensor | None = None
    vertices: Tensor | None = None
    landmarks_3d: Tensor | None = None
    yaw: float = float("nan")
    skin_mask: Tensor | None = None
    source: str = ""
    param_groups: tuple[str, ...] | None = None
    source_index: int = 0
    dense: Tensor | None = None
    replaces: str = ""

    def __post_init__(self) -> None:
        if self.param_groups is not None:
            unknown = set(self.param_groups) - set(GROUPS)
            if unknown:
                raise ValueError(f"{self.source}: unknown coefficient groups {sorted(unknown)}; known: {list(GROUPS)}")

    def group_mask(self) -> Tensor:
        """(G,) bool over :data:`~msma.face_model.params.GROUPS`: the coefficient groups this sample supervises."""
        if self.params is None:
            return torch.zeros(len(GROUPS), dtype=torch.bool)
        if self.param_groups is None:
            return torch.ones(len(GROUPS), dtype=torch.bool)
        return torch.tensor([g in self.param_groups for g in GROUPS], dtype=torch.bool)


@dataclass(frozen=True)
class FaceBatch:
    """A collated batch of :class:`FaceSample`.

    Attributes:
        image: (B, 3, S, S) float32 RGB in [0, 1].
        landmarks: (B, 68, 2) pixel coordinates in the crop; NaN rows where unknown.
        landmark_valid: (B,) bool, True where the sample has landmarks.
        crop_to_image: (B, 3, 3) crop -> original image affine maps.
        params: (B, P) flat ground-truth coefficients or None; rows of samples without them are zero.
        params_valid: (B,) bool, True where ``params`` holds ground truth (of at least one group).
        vertices: (B, N, 3) ground-truth posed vertices in mm, or None when no sample has them; rows of samples
            without them are zero (``vertices_valid``).
        landmarks_3d: (B, 68, 3), or None when no sample has them; zero rows where ``landmarks_3d_valid`` is False.
        yaw: (B,) degrees, NaN where unknown.
        skin_mask: (B, 1, S, S), or None when no sample has one; zero rows where ``skin_valid`` is False.
        source: the samples' sources.
        param_group_valid: (B, G) bool over :data:`~msma.face_model.params.GROUPS`, the coefficient groups each
            sample supervises (None: every group of every ``params_valid`` row).
        vertices_valid: (B,) bool or None (None: all rows when ``vertices`` is set).
        skin_valid: (B,) bool or None (None: all rows when ``skin_mask`` is set).
        landmarks_3d_valid: (B,) bool or None (None: all rows when ``landmarks_3d`` is set).
        source_index: (B,) int64 index of each sample's configured data source, or None (all source 0).
        dense: (B, K, 3) dense MediaPipe landmarks in crop pixels, or None when no sample has them; zero rows where
            ``dense_valid`` is False.
        dense_valid: (B,) bool or None (None: all rows when ``dense`` is set).
        replaced: (B,) bool, True for the stand-ins of items that could not be loaded (:attr:`FaceSample.replaces`),
            or None when the batch has none.
    """

    image: Tensor
    landmarks: Tensor
    landmark_valid: Tensor
    crop_to_image: Tensor
    params: Tensor | None
    params_valid: Tensor
    vertices: Tensor | None
    landmarks_3d: Tensor | None
    yaw: Tensor
    skin_mask: Tensor | None
    source: tuple[str, ...] = field(default=())
    param_group_valid: Tensor | None = None
    vertices_valid: Tensor | None = None
    skin_valid: Tensor | None = None
    landmarks_3d_valid: Tensor | None = None
    source_index: Tensor | None = None
    dense: Tensor | None = None
    dense_valid: Tensor | None = None
    replaced: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.image.shape[0])

    @property
    def num_replaced(self) -> int:
        """How many rows are stand-ins for items that could not be loaded."""
        return 0 if self.replaced is None else int(self.replaced.sum())

    def genuine(self) -> FaceBatch | None:
        """The batch without its stand-ins (an evaluation scores every item once, never one in another's place);
        None when every row is a stand-in."""
        if self.replaced is None or not bool(self.replaced.any()):
            return self
        keep = ~self.replaced.to(torch.bool)
        if not bool(keep.any()):
            return None
        return dataclasses.replace(self.select(keep), replaced=None)

    def _rows(self, value: Tensor | None, present: Tensor | None) -> Tensor:
        if present is None:
            return torch.zeros(self.batch_size, dtype=torch.bool, device=self.image.device)
        if value is None:
            return torch.ones(self.batch_size, dtype=torch.bool, device=self.image.device)
        return value.to(torch.bool)

    def target_valid(self, target: str) -> Tensor:
        """(B,) bool: the samples that carry ``target`` (one of :data:`TARGETS`)."""
        if target == "landmarks":
            return self.landmark_valid.to(torch.bool)
        if target == "params":
            return self.params_valid.to(torch.bool) if self.params is not None else self._rows(None, None)
        if target == "vertices":
            return self._rows(self.vertices_valid, self.vertices)
        if target == "skin_mask":
            return self._rows(self.skin_valid, self.skin_mask)
        if target == "landmarks_3d":
            return self._rows(self.landmarks_3d_valid, self.landmarks_3d)
        if target == "dense":
            return self._rows(self.dense_valid, self.dense)
        raise ValueError(f"unknown target {target!r}; known: {TARGETS}")

    def group_valid(self) -> Tensor:
        """(B, G) bool over :data:`~msma.face_model.params.GROUPS`: which coefficient groups each sample has."""
        rows = self.target_valid("params")
        if self.param_group_valid is None:
            return rows[:, None].expand(-1, len(GROUPS)).clone()
        return self.param_group_valid.to(torch.bool) & rows[:, None]

    def sources(self) -> Tensor:
        """(B,) int64 source index of each sample (zeros when the batch has no ``source_index``)."""
        if self.source_index is None:
            return torch.zeros(self.batch_size, dtype=torch.int64, device=self.image.device)
        return self.source_index

    def select(self, rows: Tensor | Sequence[int] | slice) -> FaceBatch:
        """The sub-batch of ``rows`` (indices, a (B,) bool mask or a slice), every field indexed alike."""
        if isinstance(rows, slice):
            index = torch.arange(self.batch_size)[rows]
        elif isinstance(rows, Tensor) and rows.dtype == torch.bool:
            index = torch.nonzero(rows.cpu(), as_tuple=False).reshape(-1)
        else:
            index = torch.as_tensor(rows, dtype=torch.int64).cpu().reshape(-1)
        changes: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                changes[f.name] = value[index.to(value.device)]
        changes["source"] = tuple(self.source[i] for i in index.tolist()) if self.source else ()
        return dataclasses.replace(self, **changes)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> FaceBatch:
        """Moves every tensor to ``device``."""
        changes = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return dataclasses.replace(self, **changes)

    def gt_params(self, layout: CoeffLayout) -> FaceParams | None:
        """Ground-truth coefficients split by ``layout`` (None when the batch has none)."""
        if self.params is None:
            return None
        return layout.split(self.params)


def _stack_optional(values: Sequence[Tensor | None], name: str) -> tuple[Tensor | None, Tensor | None]:
    """Stacks the present values with zero rows for the missing ones -> (stacked or None, (B,) valid or None).

    The valid flags are None when every sample has the value (the common single-source case).
    """
    present = [v for v in values if v is not None]
    if not present:
        return None, None
    shapes = {tuple(v.shape) for v in present}
    if len(shapes) > 1:
        raise ValueError(f"cannot collate {name} of different shapes {sorted(shapes)} (several face models?)")
    if len(present) == len(values):
        return torch.stack(present), None
    template = present[0]
    stacked = torch.stack([v if v is not None else torch.zeros_like(template) for v in values])
    return stacked, torch.tensor([v is not None for v in values], dtype=torch.bool)


def collate_samples(samples: Sequence[FaceSample]) -> FaceBatch:
    """Collates samples into a :class:`FaceBatch` (a ``DataLoader`` ``collate_fn``)."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    landmarks = torch.stack([s.landmarks for s in samples])
    valid = ~torch.isnan(landmarks).any(dim=(1, 2))
    params_list = [s.params for s in samples]
    params: Tensor | None = None
    group_valid = torch.stack([s.group_mask() for s in samples])
    params_valid = group_valid.any(dim=1)
    if params_valid.any():
        template = next(p for p in params_list if p is not None)
        params = torch.stack([p if p is not None else torch.zeros_like(template) for p in params_list])
    vertices, vertices_valid = _stack_optional([s.vertices for s in samples], "vertices")
    landmarks_3d, landmarks_3d_valid = _stack_optional([s.landmarks_3d for s in samples], "landmarks_3d")
    skin_mask, skin_valid = _stack_optional([s.skin_mask for s in samples], "skin_mask")
    dense, dense_valid = _stack_optional([s.dense for s in samples], "dense")
    partial_groups = any(s.param_groups is not None for s in samples)
    replaced = [bool(s.replaces) for s in samples]
    return FaceBatch(
        image=torch.stack([s.image for s in samples]),
        landmarks=landmarks,
        landmark_valid=valid,
        crop_to_image=torch.stack([s.crop_to_image for s in samples]),
        params=params,
        params_valid=params_valid,
        vertices=vertices,
        landmarks_3d=landmarks_3d,
        yaw=torch.tensor([s.yaw for s in samples], dtype=torch.float32),
        skin_mask=skin_mask,
        source=tuple(s.source for s in samples),
        param_group_valid=group_valid if partial_groups else None,
        vertices_valid=vertices_valid,
        skin_valid=skin_valid,
        landmarks_3d_valid=landmarks_3d_valid,
        source_index=torch.tensor([s.source_index for s in samples], dtype=torch.int64),
        dense=dense,
        dense_valid=dense_valid,
        replaced=torch.tensor(replaced, dtype=torch.bool) if any(replaced) else None,
    )
