"""Alignment jitter: the crop offsets a real face detector + 5-point alignment produce, applied in 3D.

At inference the crop comes from 5 points a landmark detector finds (``msma.data.align``); their errors move,
scale and rotate the face inside the crop. The generator renders faces already in the crop frame, so it
reproduces those errors by drawing noisy 5 points, estimating the similarity the aligner would get wrong by
(least squares, as the aligner does) and applying it to the pose: roll (exact: ``Rz(d) @ Rz(roll) Ry Rx``),
image-plane shift (translation x, y) and scale (distance to the camera). The face is then rendered with the
jittered coefficients, so every label stays exact.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from msma.data.landmark_index import five_points
from msma.face_model.model import FaceModel
from msma.face_model.params import FaceParams


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
) -> FaceParams:
    """Applies detector-like alignment errors to one sample's pose (batch of one).

    Args:
        face_model: the model (landmarks, camera).
        params: coefficients of one face (B = 1).
        image_size: crop size S in pixels.
        gen: the sample's generator (draws 10 normals and 2 uniforms).
        point_std: std of each 5-point coordinate's detector error, as a fraction of the inter-ocular distance.
        heavy_fraction: fraction of samples whose point errors are 3x larger (detector failures at the margin).

    Returns:
        The jittered coefficients (only ``angles`` roll and ``trans`` change).
    """
    noise = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    u = torch.rand(2, generator=gen, dtype=torch.float64)
    if point_std <= 0:
        return params
    with torch.no_grad():
        canonical = face_model.shape(params.id, params.exp)[:, face_model.landmark_idx]
        lm3 = face_model.transform(canonical, params.angles, params.trans)
        lm2 = face_model.camera.project(lm3, image_size)[0].double()  # (68, 2) pixels, y down
    pts = five_points(lm2)
    io = float((pts[1] - pts[0]).norm().clamp_min(1.0))
    std = point_std * io * (3.0 if float(u[0]) < heavy_fraction else 1.0)
    noisy = pts + noise * std
    # The aligner maps the noisy points onto the template; the true face then lands at the inverse offset.
    s, theta, t = similarity_lstsq(noisy, pts)
    centre = image_size / 2.0
    # Similarity about the principal point: x' = s R (x - c) + c + shift.
    c_, si = math.cos(theta), math.sin(theta)
    rot = torch.tensor([[c_, -si], [si, c_]], dtype=torch.float64)
    c_vec = torch.full((2,), centre, dtype=torch.float64)
    shift = t + s * (rot @ c_vec) - c_vec  # x' = s R x + t = s R (x - c) + c + shift
    cam = face_model.camera
    f = cam.focal(image_size)
    angles = params.angles.clone().double()
    trans = params.trans.clone().double()
    # Image rotation by theta (y down) is a rotation about the optical axis by -theta in the y-up model frame.
    d = -theta
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
