"""One reconstructed face (:class:`Reconstruction`, what :class:`msma.inference.Reconstructor` returns) and its files
(:func:`save_reconstruction`: OBJ, coefficients JSON, overlay PNG; what ``msma reconstruct`` writes)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from msma.face_model.params import FaceParams
from msma.utils.files import atomic_write_text
from msma.viz import save_png


@dataclass(frozen=True)
class Reconstruction:
    """One reconstructed face.

    Attributes:
        params: predicted coefficients (batch of one) in the face model's layout.
        vertices: (N, 3) posed vertices in mm, model/camera frame (x right, y up, z towards the camera).
        vertices_canonical: (N, 3) unposed shape (identity + expression) in mm, model frame.
        colors: (N, 3) shaded vertex colours (albedo x SH light) in [0, 1].
        albedo: (N, 3) per-vertex albedo in [0, 1].
        triangles: (F, 3) int64 triangle indices.
        landmarks: (68, 2) predicted landmarks in the original image's pixels (x right, y down).
        detected_landmarks: (68, 2) the landmark detector's points used for the alignment, original pixels.
        box: (left, top, right, bottom) detected face box in original-image pixels.
        crop: (3, S, S) the aligned crop the network saw, float RGB in [0, 1].
        crop_to_image: (3, 3) affine crop pixels -> original image pixels.
        overlay: (H, W, 3) uint8: the rendering blended on the photo, predicted landmarks drawn.
        render_mask: (H, W) float32 coverage of the rendered face in the photo, in [0, 1].
        source: where the image came from (path or ``"<array>"``).
        face_index: index of this face among the faces reconstructed in the image (0 = largest).
        texture: the baked UV texture (:class:`msma.texture.Texture`) with ``texture=True``, else None.
    """

    params: FaceParams
    vertices: Tensor
    vertices_canonical: Tensor
    colors: Tensor
    albedo: Tensor
    triangles: Tensor
    landmarks: np.ndarray
    detected_landmarks: np.ndarray
    box: tuple[float, float, float, float]
    crop: Tensor
    crop_to_image: np.ndarray
    overlay: np.ndarray
    render_mask: np.ndarray
    source: str
    face_index: int = 0
    texture: Any = None  # msma.texture.Texture when the Reconstructor bakes textures

    def coefficients_json(self) -> dict[str, Any]:
        """The coefficients and alignment as JSON-ready lists (angles in radians and degrees, trans in mm)."""
        coeffs = {g: t[0].detach().cpu().double().tolist() for g, t in self.params.items()}
        pitch, yaw, roll = (math.degrees(a) for a in coeffs["angles"])
        return {
            "source": self.source,
            "face_index": self.face_index,
            "coefficients": coeffs,
            "angles_deg": {"pitch": pitch, "yaw": yaw, "roll": roll},
            "units": {"angles": "radians", "trans": "mm", "landmarks": "original-image pixels (x right, y down)"},
            "box": list(self.box),
            "landmarks_2d": np.asarray(self.landmarks, dtype=np.float64).tolist(),
            "crop_to_image": np.asarray(self.crop_to_image, dtype=np.float64).tolist(),
        }


def save_reconstruction(rec: Reconstruction, out_dir: Path, stem: str) -> list[Path]:
    """Writes ``<stem>.obj`` (canonical shape, shaded vertex colours), ``<stem>.json``, ``<stem>_overlay.png``;
    with a baked texture the OBJ carries UVs and a material instead (``<stem>.mtl``, ``<stem>_texture.png``)."""
    from msma.export import export_obj

    out_dir.mkdir(parents=True, exist_ok=True)
    extra: list[Path] = []
    if rec.texture is not None:
        from msma.texture import write_textured_obj

        obj, *extra = write_textured_obj(out_dir / f"{stem}.obj", rec.vertices_canonical.numpy(), rec.texture)
    else:
        obj = export_obj(out_dir / f"{stem}.obj", rec.vertices_canonical, rec.triangles, vertex_colors=rec.colors)
    meta = rec.coefficients_json()
    meta["obj"] = obj.name
    meta["obj_frame"] = "canonical (unposed) shape, mm, x right, y up, z towards the viewer"
    js = out_dir / f"{stem}.json"
    atomic_write_text(js, json.dumps(meta, indent=1))
    png = out_dir / f"{stem}_overlay.png"
    save_png(rec.overlay, png)
    return [obj, js, png, *extra]
