"""Backend-agnostic rasteriser protocol (shaped like nvdiffrast's primitives) and the renderer's output.

Conventions (identical to nvdiffrast, so outputs of the backends compare directly):

* ``clip_pos`` (B, V, 4) homogeneous clip coordinates; ``ndc = clip.xyz / clip.w``.
* pixel ``(row i, column j)`` has its centre at ``ndc = ((j + 0.5) / W * 2 - 1, (i + 0.5) / H * 2 - 1)``:
  row 0 is ``ndc_y = -1``. (:class:`msma.face_model.camera.PerspectiveCamera` flips y in its projection so that
  row 0 is the top of the photo.)
* ``rast`` (B, H, W, 4) float32: ``(u, v, z/w, triangle_id + 1)``; ``u``, ``v`` are the barycentrics of the
  triangle's vertices 0 and 1 (vertex 2 gets ``1 - u - v``); ``triangle_id + 1 == 0`` marks an empty pixel, where
  ``u = v = z = 0``.
* ``tri`` (F, 3) int32 vertex indices.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class Rasterizer(Protocol):
    """The three primitives every backend implements with nvdiffrast's semantics."""

    #: backend name, e.g. ``"torch"`` or ``"nvdiffrast"``.
    name: str

    def rasterize(self, clip_pos: Tensor, tri: Tensor, resolution: tuple[int, int]) -> Tensor:
        """Rasterises triangles.

        Args:
            clip_pos: (B, V, 4) clip-space vertex positions.
            tri: (F, 3) int32 triangle vertex indices.
            resolution: (H, W) of the output.

        Returns:
            rast (B, H, W, 4): ``(u, v, z/w, triangle_id + 1)``; differentiable w.r.t. ``clip_pos`` through u, v.
        """
        ...

    def interpolate(self, attr: Tensor, rast: Tensor, tri: Tensor) -> Tensor:
        """Interpolates per-vertex attributes (B, V, C) at each pixel -> (B, H, W, C); zero on empty pixels."""
        ...

    def antialias(self, color: Tensor, rast: Tensor, clip_pos: Tensor, tri: Tensor) -> Tensor:
        """Analytic silhouette antialiasing of (B, H, W, C) ``color`` (identity where unsupported)."""
        ...


@dataclass(frozen=True)
class RenderOutput:
    """What :class:`msma.render.renderer.MeshRenderer` produces, image layout (B, C, H, W), row 0 at the top.

    Attributes:
        image: (B, 3, H, W) shaded colour in [0, 1] (linear), zero where the mesh does not cover.
        mask: (B, 1, H, W) coverage in [0, 1] (1 inside the rendered face region; antialiased edges in between).
        depth: (B, 1, H, W) distance from the camera along the view axis in mm, 0 where empty.
        normals: (B, 3, H, W) unit normals in the model frame after pose, 0 where empty.
        rast: (B, H, W, 4) the raw rasteriser output (``triangle_id + 1`` in the last channel).
    """

    image: Tensor
    mask: Tensor
    depth: Tensor
    normals: Tensor
    rast: Tensor

    def detach(self) -> RenderOutput:
        """A copy with every tensor detached from the autograd graph."""
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).detach() for f in dataclasses.fields(self)})
