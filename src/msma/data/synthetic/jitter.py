"""Alignment jitter: the crop offsets a real face detector + 5-point alignment produce, applied in 3D.

At inference the crop comes from 5 points a landmark detector finds: Deep3D's alignment
(:func:`msma.data.align.alignment_transform`, scale and translation onto the face model's mean-face template)
puts those points where the template's are, and the detector's errors move and scale the face inside the crop.
The generator renders faces directly in the crop frame, so it places each face the same way: it draws the face's
5 points plus detector noise, runs the aligner's own fit on them and applies the resulting image-plane scale and
shift to the pose (scale: distance to the camera; shift: translation x, y). The face is then rendered with these
coefficients, so every label stays exact, and synthetic crops are framed like real aligned crops (the mean face
sits on the template) rather than spread around them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from msma.data.landmark_index import five_points
from msma.face_model.model import FaceModel
from msma.face_model.params import FaceParams

#: Faces turned further than this keep their sampled placement (5-point alignment is unreliable there).
ALIGN_MAX_YAW_DEG = 50.0
#: Fraction of the other faces that keep their sampled placement (robustness to other crops, e.g. face boxes).
UNALIGNED_FRACTION = 0.2


def similarity_lstsq(src: Tensor, dst: Tensor) -> tuple[float, float, Tensor]:
    """Least-squares 2D similarity ``dst ~ s R(theta) src + t`` (Umeyama without reflection).

    Args:
        src: (K, 2) points; dst: (K, 2) points.

    Returns:
        ``(s, theta, t)``: scale, angle in radians (counter-clockwise in the points' frame), (2,) translation.
    """
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    var = float((a * a).sum().clamp_min(1e-12))
    cos_part = float((a * b).sum())
    sin_part = float((a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]).sum())
    theta = math.atan2(sin_part, cos_part)
    s = math.hypot(cos_part, sin_part) / var
    c, si = math.cos(theta), math.sin(theta)
    rot = torch.tensor([[c, -si], [si, c]], dtype=src.dtype)
    t = md - s * (rot @ ms)
    return s, theta, t


def jitter_params(
    face_model: FaceModel,
    params: FaceParams,
    image_size: int,
    gen: torch.Generator,
    point_std: float = 0.04,
    heavy_fraction: float = 0.1,
    align: bool = True,
) -> FaceParams:
    """Places one sample's face in the crop as detection + 5-point alignment would (batch of one).

    With ``align``, the face is moved to where :func:`msma.data.align.alignment_transform` (Deep3D's scale +
    translation alignment onto the face model's mean-face template, what :class:`msma.inference.Reconstructor`
    does) puts it when given the face's 5 points plus detector noise; the sampled translation then only sets
    the perspective. Without ``align``, the noise-induced similarity (incl. a rotation) is applied around the
    sampled placement.

    Args:
        face_model: the model (landmarks, camera, mean-face template).
        params: coefficients of one face (B = 1).
        image_size: crop size S in pixels.
        gen: the sample's generator (draws 10 normals and 2 uniforms).
        point_std: std of each 5-point coordinate's detector error, as a fraction of the inter-ocular distance.
        heavy_fraction: fraction of samples whose point errors are 3x larger (detector failures at the margin).
        align: place the face as the aligner does (else: jitter around the sampled placement); not applied beyond
            :data:`ALIGN_MAX_YAW_DEG` of yaw and for :data:`UNALIGNED_FRACTION` of the samples.

    Returns:
        The coefficients with the crop placement applied (``trans`` and, without ``align``, roll change).
    """
    noise = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    u = torch.rand(2, generator=gen, dtype=torch.float64)
    if point_std <= 0 and not align:
        return params
    with torch.no_grad():
        canonical = face_model.shape(params.id, params.exp)[:, face_model.landmark_idx]
        lm3 = face_model.transform(canonical, params.angles, params.trans)
        lm2 = face_model.camera.project(lm3, image_size)[0].double()  # (68, 2) pixels, y down
    pts = five_points(lm2)
    io = float((pts[1] - pts[0]).norm().clamp_min(1.0))
    std = point_std * io * (3.0 if float(u[0]) < heavy_fraction else 1.0)
    noisy = pts + noise * std
    centre = image_size / 2.0 - 0.5  # the principal point (pixel-index coordinates)
    # 5-point detectors fail on near-profile faces (those photos get box crops), and other crop protocols exist:
    # beyond ALIGN_MAX_YAW_DEG and for a fraction UNALIGNED_FRACTION the sampled placement is kept (+ jitter).
    yaw = abs(math.degrees(float(params.angles[0, 1])))
    if align and (yaw > ALIGN_MAX_YAW_DEG or float(u[1]) < UNALIGNED_FRACTION):
        align = False
    if align:
        from msma.data.align import alignment_transform, template_from_face_model

        m = alignment_transform(noisy.numpy(), template_from_face_model(face_model), image_size)  # crop -> image
        inv = float(m[0, 0])
        t = torch.from_numpy(m[:2, 2].copy()) + centre * inv  # image position of the crop centre
        # crop = (image - t) / inv + c = s (image - c) + c + shift with s = 1 / inv and shift = (c - t) / inv
        s, theta = 1.0 / inv, 0.0
        shift = (torch.full((2,), centre, dtype=torch.float64) - t) / inv
    else:
        # The aligner maps the noisy points onto the template; the true face lands at the inverse offset.
        s, theta, t = similarity_lstsq(noisy, pts)
        c_, si = math.cos(theta), math.sin(theta)
        rot = torch.tensor([[c_, -si], [si, c_]], dtype=torch.float64)
        c_vec = torch.full((2,), centre, dtype=torch.float64)
        shift = t + s * (rot @ c_vec) - c_vec  # x' = s R x + t = s R (x - c) + c + shift
    return _apply_image_similarity(face_model, params, image_size, s, theta, shift)


def _apply_image_similarity(
    face_model: FaceModel, params: FaceParams, image_size: int, s: float, theta: float, shift: Tensor
) -> FaceParams:
    """Moves the face so its projection undergoes ``x' = s R(theta) (x - c) + c + shift`` about the principal
    point c (exact for the roll and the shift of points at the face's depth; the scale moves the face along the
    view axis, exact up to the perspective change)."""
    cam = face_model.camera
    f = cam.focal(image_size)
    angles = params.angles.clone().double()
    trans = params.trans.clone().double()
    # Image rotation by theta (y down) is a rotation about the optical axis by -theta in the y-up model frame.
    d = -theta
    if d != 0.0:
        angles[0, 2] += d
        cd, sd = math.cos(d), math.sin(d)
        tx, ty = float(trans[0, 0]), float(trans[0, 1])
        trans[0, 0], trans[0, 1] = cd * tx - sd * ty, sd * tx + cd * ty
    # Scale: move the face to depth / s (x, y scale with it so the face centre's projection scales by s).
    depth = cam.distance - float(trans[0, 2])
    new_depth = depth / max(s, 1e-3)
    trans[0, 2] = cam.distance - new_depth
    trans[0, :2] = trans[0, :2] / max(s, 1e-3)
    # Shift in pixels -> mm at the face's depth (y down in pixels, y up in the model frame).
    trans[0, 0] += float(shift[0]) * new_depth / f
    trans[0, 1] -= float(shift[1]) * new_depth / f
    return FaceParams(
        id=params.id,
        exp=params.exp,
        tex=params.tex,
        angles=angles.to(params.angles.dtype),
        sh=params.sh,
        trans=trans.to(params.trans.dtype),
    )
