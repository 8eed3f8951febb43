"""One sample and one collated batch, the contract between the datasets and the training module."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from msma.face_model.params import CoeffLayout, FaceParams


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


@dataclass(frozen=True)
class FaceBatch:
    """A collated batch of :class:`FaceSample`.

    Attributes:
        image: (B, 3, S, S) float32 RGB in [0, 1].
        landmarks: (B, 68, 2) pixel coordinates in the crop; NaN rows where unknown.
        landmark_valid: (B,) bool, True where the sample has landmarks.
        crop_to_image: (B, 3, 3) crop -> original image affine maps.
        params: (B, P) flat ground-truth coefficients or None; rows of samples without them are zero.
        params_valid: (B,) bool, True where ``params`` holds ground truth.
        vertices: (B, N, 3) ground-truth posed vertices in mm or None (only when every sample has them).
        landmarks_3d: (B, 68, 3) or None (only when every sample has them).
        yaw: (B,) degrees, NaN where unknown.
        skin_mask: (B, 1, S, S) or None (only when every sample has one).
        source: the samples' sources.
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

    @property
    def batch_size(self) -> int:
        return int(self.image.shape[0])

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


def _stack_optional(values: Sequence[Tensor | None]) -> Tensor | None:
    if all(v is not None for v in values):
        return torch.stack([v for v in values if v is not None])
    return None


def collate_samples(samples: Sequence[FaceSample]) -> FaceBatch:
    """Collates samples into a :class:`FaceBatch` (a ``DataLoader`` ``collate_fn``)."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    landmarks = torch.stack([s.landmarks for s in samples])
    valid = ~torch.isnan(landmarks).any(dim=(1, 2))
    params_list = [s.params for s in samples]
    params: Tensor | None = None
    params_valid = torch.tensor([p is not None for p in params_list], dtype=torch.bool)
    if params_valid.any():
        template = next(p for p in params_list if p is not None)
        params = torch.stack([p if p is not None else torch.zeros_like(template) for p in params_list])
    return FaceBatch(
        image=torch.stack([s.image for s in samples]),
        landmarks=landmarks,
        landmark_valid=valid,
        crop_to_image=torch.stack([s.crop_to_image for s in samples]),
        params=params,
        params_valid=params_valid,
        vertices=_stack_optional([s.vertices for s in samples]),
        landmarks_3d=_stack_optional([s.landmarks_3d for s in samples]),
        yaw=torch.tensor([s.yaw for s in samples], dtype=torch.float32),
        skin_mask=_stack_optional([s.skin_mask for s in samples]),
        source=tuple(s.source for s in samples),
    )
