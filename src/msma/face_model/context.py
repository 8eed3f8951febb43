"""The head around the face: an optional *context* mesh that follows the face model's coefficients.

The face model renders the narrow face (the region the losses and the landmark semantics refer to). Synthetic
data also needs what surrounds it in a photo: the skull, ears, neck, teeth and the mouth interior. The context
mesh holds that geometry with its own linear bases in the same coefficient layout (identity and expression), so
``vertices = mean + id_basis @ id + exp_basis @ exp`` and the face model's pose apply to it unchanged. It is not
part of the face model's buffers (no change to checkpoints, fingerprints or the losses); the synthetic generator
renders it together with the face (:mod:`msma.data.synthetic.head`).

Vertices of the context mesh are either *copies* of face-model vertices (``face_ref``; the ears and neck of ICT's
face area, which share vertices with the rendered face) or *own* vertices with their own bases (ICT's back of the
head and neck, gums, tongue, teeth). Copies keep per-vertex attributes (skin weight, colour) separate from the
face's, so the face's skin mask never bleeds into the context.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

#: ``part`` labels of context vertices.
PART_SKIN = 0
PART_GUMS = 1
PART_TEETH = 2
PART_NAMES = ("skin", "gums_tongue", "teeth")


@dataclass(frozen=True)
class ContextMesh:
    """Geometry around the rendered face (numpy, model frame, mm).

    Attributes:
        face_ref: (Mf,) int64 face-model vertex indices whose positions the first Mf context vertices copy.
        mean_shape: (Mo, 3) float32 mean positions of the own vertices (mm, the face model's frame and centre).
        id_basis: (Mo, 3, n_id) float32 identity basis of the own vertices (same coefficients as the face model).
        exp_basis: (Mo, 3, n_exp) float32 expression basis of the own vertices.
        tri: (T, 3) int64 triangles over the ``Mf + Mo`` context vertices (copies first), counter-clockwise
            seen from outside.
        part: (Mf + Mo,) int64 :data:`PART_NAMES` label per context vertex.
        hair: (Mf + Mo,) float32 in [0, 1]: scalp weight (where hair grows on the skull), 0 on ears, face, neck.
    """

    face_ref: np.ndarray
    mean_shape: np.ndarray
    id_basis: np.ndarray
    exp_basis: np.ndarray
    tri: np.ndarray
    part: np.ndarray
    hair: np.ndarray

    def __post_init__(self) -> None:
        validate_context(self)

    @property
    def n_vertices(self) -> int:
        return int(self.face_ref.shape[0] + self.mean_shape.shape[0])

    def digest(self) -> str:
        """sha256 (16 hex digits) over every array (for cache keys of data rendered with this mesh)."""
        import hashlib

        h = hashlib.sha256()
        for key in ("face_ref", "mean_shape", "id_basis", "exp_basis", "tri", "part", "hair"):
            h.update(key.encode())
            h.update(np.ascontiguousarray(getattr(self, key)).tobytes())
        return h.hexdigest()[:16]

    def canonical(self, face_canonical: Tensor, id: Tensor, exp: Tensor) -> Tensor:
        """Unposed context vertices.

        Args:
            face_canonical: (B, N, 3) the face model's canonical vertices (mm) of the same coefficients.
            id: (B, n_id) identity coefficients.
            exp: (B, n_exp) expression coefficients.

        Returns:
            (B, Mf + Mo, 3) canonical context vertices in mm (copies first).
        """
        dev, dt = face_canonical.device, face_canonical.dtype
        mean = torch.as_tensor(self.mean_shape, device=dev, dtype=dt)
        idb = torch.as_tensor(self.id_basis, device=dev, dtype=dt)
        exb = torch.as_tensor(self.exp_basis, device=dev, dtype=dt)
        own = mean + torch.einsum("nck,bk->bnc", idb, id.to(dt)) + torch.einsum("nck,bk->bnc", exb, exp.to(dt))
        ref = torch.as_tensor(self.face_ref, device=dev)
        return torch.cat([face_canonical[:, ref], own], dim=1)


def validate_context(c: ContextMesh, n_face: int | None = None, source: str = "context mesh") -> None:
    """Checks shapes and index ranges; raises ``ValueError`` naming ``source``."""
    mo = c.mean_shape.shape[0] if c.mean_shape.ndim == 2 else -1
    if c.mean_shape.ndim != 2 or c.mean_shape.shape[1] != 3:
        raise ValueError(f"{source}: mean_shape must be (Mo, 3), got {c.mean_shape.shape}")
    for key in ("id_basis", "exp_basis"):
        arr = getattr(c, key)
        if arr.ndim != 3 or arr.shape[:2] != (mo, 3):
            raise ValueError(f"{source}: {key} must be (Mo={mo}, 3, K), got {arr.shape}")
    m = c.face_ref.shape[0] + mo
    if c.face_ref.ndim != 1 or (c.face_ref.size and c.face_ref.min() < 0):
        raise ValueError(f"{source}: face_ref must be (Mf,) non-negative indices")
    if n_face is not None and c.face_ref.size and c.face_ref.max() >= n_face:
        raise ValueError(f"{source}: face_ref indices must be < {n_face} (face-model vertices)")
    if c.tri.ndim != 2 or c.tri.shape[1] != 3 or c.tri.shape[0] == 0 or c.tri.min() < 0 or c.tri.max() >= m:
        raise ValueError(f"{source}: tri must be a non-empty (T, 3) array of indices in [0, {m})")
    if c.part.shape != (m,) or c.hair.shape != (m,):
        raise ValueError(f"{source}: part and hair must be ({m},), got {c.part.shape}, {c.hair.shape}")
    if not (np.isfinite(c.mean_shape).all() and np.isfinite(c.id_basis).all() and np.isfinite(c.exp_basis).all()):
        raise ValueError(f"{source}: non-finite geometry")
