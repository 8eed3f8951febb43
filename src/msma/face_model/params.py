"""Face-model coefficients as a frozen dataclass and the named layout of a flat coefficient vector.

Conventions used everywhere in msma:

* ``id`` (B, n_id), ``exp`` (B, n_exp), ``tex`` (B, n_tex): linear-model coefficients (unitless).
* ``angles`` (B, 3): Euler angles in radians (pitch about x, yaw about y, roll about z);
  the rotation is ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)`` as in Deep3DFaceRecon.
* ``sh`` (B, 27): spherical-harmonics lighting, 9 bands x 3 colour channels, laid out like Deep3D's
  ``gamma`` (channel-major: ``sh.view(B, 3, 9)``), *without* the +0.8 DC offset (the shading adds it).
* ``trans`` (B, 3): translation in millimetres in the model frame (x right, y up, z towards the camera).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

#: Names of the coefficient groups, in the order of the flat vector (Deep3D's order).
GROUPS: tuple[str, ...] = ("id", "exp", "tex", "angles", "sh", "trans")


@dataclass(frozen=True)
class FaceParams:
    """Coefficients of one batch of faces.

    Attributes:
        id: (B, n_id) identity coefficients.
        exp: (B, n_exp) expression coefficients.
        tex: (B, n_tex) albedo coefficients.
        angles: (B, 3) pitch, yaw, roll in radians.
        sh: (B, 27) SH lighting coefficients, channel-major (R 0..8, G 9..17, B 18..26), no DC offset.
        trans: (B, 3) translation in millimetres.
    """

    id: Tensor
    exp: Tensor
    tex: Tensor
    angles: Tensor
    sh: Tensor
    trans: Tensor

    def __post_init__(self) -> None:
        batch = {getattr(self, g).shape[0] for g in GROUPS}
        if len(batch) != 1:
            shapes = {g: tuple(getattr(self, g).shape) for g in GROUPS}
            raise ValueError(f"FaceParams groups disagree on the batch size: {shapes}")
        for g, n in (("angles", 3), ("sh", 27), ("trans", 3)):
            if getattr(self, g).ndim != 2 or getattr(self, g).shape[1] != n:
                raise ValueError(f"FaceParams.{g} must be (B, {n}), got {tuple(getattr(self, g).shape)}")

    @property
    def batch_size(self) -> int:
        return int(self.id.shape[0])

    @property
    def device(self) -> torch.device:
        return self.id.device

    def items(self) -> Iterator[tuple[str, Tensor]]:
        for g in GROUPS:
            yield g, getattr(self, g)

    def to(self, *args: object, **kwargs: object) -> FaceParams:
        """Moves/casts every group like ``Tensor.to``."""
        return FaceParams(**{g: t.to(*args, **kwargs) for g, t in self.items()})  # type: ignore[call-overload]

    def detach(self) -> FaceParams:
        return FaceParams(**{g: t.detach() for g, t in self.items()})

    def replace(self, **changes: Tensor) -> FaceParams:
        """Returns a copy with the given groups replaced."""
        return dataclasses.replace(self, **changes)

    def __getitem__(self, index: int | slice | Tensor) -> FaceParams:
        """Selects a subset of the batch (keeps the batch dimension for int indices).

        A group is an attribute (``params.exp``), not an index: ``params["exp"]`` raises ``TypeError`` saying so.
        """
        if isinstance(index, str):
            raise TypeError(
                f"FaceParams[...] selects batch items; for the coefficient group {index!r} use params.{index} "
                f"(groups: {', '.join(GROUPS)})"
            )
        if isinstance(index, int):
            index = slice(index, index + 1)
        return FaceParams(**{g: t[index] for g, t in self.items()})

    @staticmethod
    def cat(params: list[FaceParams]) -> FaceParams:
        """Concatenates along the batch dimension."""
        return FaceParams(**{g: torch.cat([getattr(p, g) for p in params]) for g in GROUPS})


#: Sign of (pitch, yaw, roll) and of (tx, ty, tz) for the mirror image of a posed face: mirroring the crop about
#: its vertical centre line is ``M = diag(-1, 1, 1)`` in the model/camera frame (principal point at the crop
#: centre), and ``M Rz(roll) Ry(yaw) Rx(pitch) M = Rz(-roll) Ry(-yaw) Rx(pitch)``.
MIRROR_ANGLE_SIGNS: tuple[float, float, float] = (1.0, -1.0, -1.0)
MIRROR_TRANS_SIGNS: tuple[float, float, float] = (-1.0, 1.0, 1.0)


def mirror_pose(params: FaceParams) -> FaceParams:
    """The pose of the horizontally mirrored image: ``(pitch, -yaw, -roll)`` and ``(-tx, ty, tz)``.

    Exact for the mirror image of the posed face when its shape is symmetric; the other groups are returned as
    they are (a mirrored face's identity, expression and albedo are not, in general, coefficients of the model).
    """
    a = params.angles.new_tensor(MIRROR_ANGLE_SIGNS)
    t = params.trans.new_tensor(MIRROR_TRANS_SIGNS)
    return params.replace(angles=params.angles * a, trans=params.trans * t)


@dataclass(frozen=True)
class CoeffLayout:
    """Named slices of a flat coefficient vector ``(B, total)`` in the order of :data:`GROUPS`.

    BFM (Deep3DFaceRecon) uses ``CoeffLayout(80, 64, 80)`` = 257 coefficients; ICT-FaceKit uses its own
    ``n_id``/``n_exp``/``n_tex`` (see :func:`msma.face_model.ict.ict_layout`).
    """

    n_id: int
    n_exp: int
    n_tex: int
    n_angles: int = field(default=3, init=False)
    n_sh: int = field(default=27, init=False)
    n_trans: int = field(default=3, init=False)

    def __post_init__(self) -> None:
        for name in ("n_id", "n_exp", "n_tex"):
            if getattr(self, name) < 0:
                raise ValueError(f"CoeffLayout.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def sizes(self) -> dict[str, int]:
        return {g: getattr(self, f"n_{g}") for g in GROUPS}

    @property
    def total(self) -> int:
        return sum(self.sizes.values())

    @property
    def slices(self) -> dict[str, slice]:
        out: dict[str, slice] = {}
        start = 0
        for g, n in self.sizes.items():
            out[g] = slice(start, start + n)
            start += n
        return out

    def split(self, flat: Tensor) -> FaceParams:
        """Flat ``(B, total)`` vector -> :class:`FaceParams` (views, no copy)."""
        if flat.ndim != 2 or flat.shape[1] != self.total:
            raise ValueError(f"expected a (B, {self.total}) coefficient tensor, got {tuple(flat.shape)}")
        return FaceParams(**{g: flat[:, s] for g, s in self.slices.items()})

    def join(self, params: FaceParams) -> Tensor:
        """:class:`FaceParams` -> flat ``(B, total)`` vector."""
        for g, n in self.sizes.items():
            got = getattr(params, g).shape[1]
            if got != n:
                raise ValueError(f"FaceParams.{g} has {got} coefficients, layout expects {n}")
        return torch.cat([getattr(params, g) for g in GROUPS], dim=1)

    def zeros(
        self, batch: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> FaceParams:
        """All-zero coefficients: the mean face, frontal, at the origin, with Deep3D's ambient light."""
        return self.split(torch.zeros(batch, self.total, device=device, dtype=dtype))
