"""What :meth:`msma.face_model.model.FaceModel.forward` returns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class FaceOutput:
    """Geometry and colour of a batch of posed faces.

    Attributes:
        vertices: (B, N, 3) posed vertices in mm, model frame (x right, y up, z towards the camera),
            i.e. ``R @ v + trans``.
        vertices_canonical: (B, N, 3) unposed shape (mean + id + exp) in mm.
        normals: (B, N, 3) unit vertex normals of the posed mesh, pointing out of the face.
        albedo: (B, N, 3) per-vertex albedo (RGB, linear, nominally [0, 1]).
        color: (B, N, 3) albedo shaded by the SH lighting (Deep3D's shading), clamped to >= 0.
        landmarks_3d: (B, 68, 3) posed 68 landmark vertices in mm (iBUG/Multi-PIE order).
        landmarks_2d: (B, 68, 2) their projections in pixel coordinates (x right, y down) at ``image_size``.
        clip: (B, N, 4) clip-space positions for the rasteriser at ``image_size``.
        image_size: the square image size the projections refer to.
    """

    vertices: Tensor
    vertices_canonical: Tensor
    normals: Tensor
    albedo: Tensor
    color: Tensor
    landmarks_3d: Tensor
    landmarks_2d: Tensor
    clip: Tensor
    image_size: int

    def detach(self) -> FaceOutput:
        """A copy with every tensor detached from the autograd graph."""
        return dataclasses.replace(
            self, **{f.name: getattr(self, f.name).detach() for f in dataclasses.fields(self) if f.name != "image_size"}
        )
