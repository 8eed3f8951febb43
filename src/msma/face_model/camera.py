"""Pinhole camera equivalent to Deep3DFaceRecon's, in millimetres.

Frames:

* **model frame** (vertices out of :class:`~msma.face_model.model.FaceModel`): millimetres, x to the viewer's
  right (the subject's left), y up, z towards the camera.
* **camera**: on the +z axis at ``distance`` mm, looking down -z, y up. Depth of a point is ``distance - z``.
* **image / pixel coordinates**: x right, y down, in pixel-index units (the centre of pixel (i, j) is at
  (j, i) exactly; the image spans [-0.5, W-0.5]). This is the convention of dlib, face-alignment and the
  AFLW2000-3D ``pt2d``/``pt3d_68`` annotations, so landmarks compare directly.
* **clip space** (for the rasteriser): nvdiffrast's convention, ``ndc = clip.xyz / clip.w``, pixel row ``i``
  has its centre at ``ndc_y = (i + 0.5) / H * 2 - 1``. The projection flips y so that row 0 is the top of the
  image: rendered images come out upright, in the same frame as the input photo.

Deep3D constants (``models/bfm.py`` / ``util/nvdiffrast.py`` of Deep3DFaceRecon_pytorch): focal 1015 px at a
224 px image, principal point at the image centre, camera 10 BFM units (= 1 m) from the origin, znear 5 and
zfar 15 units (0.5 m / 1.5 m).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: Deep3D's focal length in pixels for a 224x224 image.
DEEP3D_FOCAL_224 = 1015.0
#: Deep3D's camera distance (10 BFM units of 0.1 m) in millimetres.
DEEP3D_DISTANCE_MM = 1000.0
DEEP3D_ZNEAR_MM = 500.0
DEEP3D_ZFAR_MM = 1500.0


@dataclass(frozen=True)
class PerspectiveCamera:
    """Deep3D's perspective camera, scaled with the image size.

    Args:
        focal_224: focal length in pixels for a 224 px image; scaled linearly with ``image_size``.
        distance: camera distance from the model origin in mm.
        znear: near plane distance from the camera in mm.
        zfar: far plane distance from the camera in mm.
    """

    focal_224: float = DEEP3D_FOCAL_224
    distance: float = DEEP3D_DISTANCE_MM
    znear: float = DEEP3D_ZNEAR_MM
    zfar: float = DEEP3D_ZFAR_MM

    def focal(self, image_size: int) -> float:
        """Focal length in pixels for a square image of ``image_size`` pixels."""
        return self.focal_224 * image_size / 224.0

    def depth(self, vertices: Tensor) -> Tensor:
        """Distance along the viewing axis, (B, N) in mm, positive in front of the camera."""
        return self.distance - vertices[..., 2]

    def project(self, vertices: Tensor, image_size: int) -> Tensor:
        """Model-frame points (B, N, 3) mm -> pixel coordinates (B, N, 2), x right, y down, pixel-index units."""
        f = self.focal(image_size)
        d = self.depth(vertices).clamp_min(1e-3)
        c = image_size / 2.0 - 0.5
        u = c + f * vertices[..., 0] / d
        v = c - f * vertices[..., 1] / d
        return torch.stack([u, v], dim=-1)

    def to_clip(self, vertices: Tensor, image_size: int) -> Tensor:
        """Model-frame points (B, N, 3) mm -> homogeneous clip coordinates (B, N, 4), nvdiffrast convention.

        ``x_ndc``/``y_ndc`` reproduce :meth:`project` (``pixel = (ndc + 1) / 2 * size - 0.5``);
        ``z_ndc`` maps depth ``znear -> -1`` and ``zfar -> +1`` (OpenGL).
        """
        f = self.focal(image_size)
        d = self.depth(vertices)
        n, fa = self.znear, self.zfar
        x = (2.0 * f / image_size) * vertices[..., 0]
        y = (2.0 * f / image_size) * vertices[..., 1] * -1.0
        z = d * (fa + n) / (fa - n) - 2.0 * fa * n / (fa - n)
        return torch.stack([x, y, z, d], dim=-1)

    def fov_degrees(self) -> float:
        """Full field of view in degrees (12.59 for Deep3D's camera)."""
        return float(2.0 * torch.rad2deg(torch.atan(torch.tensor(112.0 / self.focal_224))))
