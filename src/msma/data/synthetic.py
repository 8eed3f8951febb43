"""Synthetic training faces rendered from the face model, with exact ground truth.

Each sample is a face drawn from the face model's prior (identity, expression, albedo), posed, lit with random
spherical-harmonics light, rendered with :class:`msma.render.renderer.MeshRenderer` and composited over a random
procedural background. Ground truth: the flat coefficients (``face_model.layout``), the posed vertices (mm), the
projected 68 landmarks (pixels), the rendered skin mask and the yaw. The sampling distributions are documented in
``docs/synthetic.md`` and in :func:`sample_params`.

Determinism: sample ``index`` of a dataset with ``seed`` is generated from its own random generator, seeded from
``(seed, index)`` only, so it does not depend on worker order, batch composition or how many samples the dataset
has. Rendering in batches and rendering alone agree up to float rounding (the stored uint8 image may differ by one
grey level in a few pixels).

Caching: with a ``cache_dir`` the samples are generated once, in batches, into
``cache_dir/<key>/shard_<k>/`` (``images.npy`` uint8 (K, S, S, 3), ``skin.npy`` uint8 (K, S, S),
``params.npy`` float32 (K, P), ``landmarks.npy`` float32 (K, 68, 2) and ``done.json`` with the count and the
files' sizes and SHA-256). A shard is written into a temporary directory and renamed into place, so a shard
directory either is complete or does not exist; a shard whose ``done.json`` is missing or does not match its
files (a copy interrupted, a disk full, a file edited) is detected by :meth:`SyntheticFaceDataset.ensure_generated`
and regenerated. ``<key>`` hashes every setting that changes the pixels or the labels (generator version, face
model content, image size, shard size, renderer backend, sampling settings); ``num_samples`` is not part of it,
so a larger dataset reuses the shards of a smaller one with the same settings.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from msma.data.batch import FaceSample
from msma.data.landmark_index import INNER_LIP
from msma.face_model.model import FaceModel
from msma.face_model.params import FaceParams
from msma.face_model.rotation import euler_to_matrix
from msma.face_model.shading import SH_A, SH_DC_OFFSET, sh_basis
from msma.render.renderer import MeshRenderer
from msma.utils.files import atomic_write_text, sha256_file
from msma.utils.progress import progress_bar

log = logging.getLogger(__name__)

#: Bumped whenever the generator's output for the same settings changes (part of the cache key).
SYNTHETIC_VERSION = 2
#: Files of one cache shard.
_SHARD_FILES = ("images.npy", "skin.npy", "params.npy", "landmarks.npy")
_DONE = "done.json"

# Expression semantics for blendshape models with ARKit names (ICT-FaceKit): pairs that cannot both be active,
# and the gaze shapes that are driven together (conjugate eye movement) instead of independently.
_EXCLUSIVE_BASES: tuple[tuple[str, str], ...] = (
    ("jawLeft", "jawRight"),
    ("mouthLeft", "mouthRight"),
    ("eyeBlink", "eyeWide"),
    ("mouthSmile", "mouthFrown"),
    ("mouthPucker", "mouthStretch"),
)
_GAZE_BASES = ("eyeLookIn", "eyeLookOut", "eyeLookUp", "eyeLookDown")


# ------------------------------------------------------------------------------------------------ sampling
@dataclass(frozen=True)
class SamplingSettings:
    """The distributions :func:`sample_params` draws from (see its docstring for the meaning of each).

    A frozen record of the keyword arguments of :func:`sample_params`, kept by the dataset for its cache key.
    """

    max_yaw_deg: float = 60.0
    extreme_yaw_fraction: float = 0.1
    extreme_yaw_limit_deg: float = 90.0
    pitch_std_deg: float = 10.0
    max_pitch_deg: float = 30.0
    roll_std_deg: float = 6.0
    max_roll_deg: float = 20.0
    id_scale: float = 1.0
    exp_scale: float = 1.0
    tex_scale: float = 1.0
    neutral_fraction: float = 0.1
    max_active_expressions: int = 5
    light_strength: float = 1.0
    shift_std_mm: float = 8.0
    max_shift_mm: float = 20.0
    depth_range_mm: float = 80.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_yaw_deg <= self.extreme_yaw_limit_deg <= 90.0:
            raise ValueError(
                f"need 0 <= max_yaw_deg ({self.max_yaw_deg}) <= extreme_yaw_limit_deg "
                f"({self.extreme_yaw_limit_deg}) <= 90"
            )
        if not 0.0 <= self.extreme_yaw_fraction <= 1.0 or not 0.0 <= self.neutral_fraction <= 1.0:
            raise ValueError("extreme_yaw_fraction and neutral_fraction must lie in [0, 1]")
        for name in ("pitch_std_deg", "max_pitch_deg", "roll_std_deg", "max_roll_deg", "id_scale", "exp_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("tex_scale", "light_strength", "shift_std_mm", "max_shift_mm", "depth_range_mm"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.depth_range_mm >= 400.0:
            raise ValueError(
                f"depth_range_mm must stay well inside the camera's 500 mm near plane, got {self.depth_range_mm}"
            )
        if self.max_active_expressions < 1:
            raise ValueError(f"max_active_expressions must be >= 1, got {self.max_active_expressions}")


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)


def _truncated_normal(gen: torch.Generator, n: int, std: float, limit: float) -> Tensor:
    """``N(0, std)`` resampled until inside ``[-limit, limit]`` (a fixed number of draws: deterministic)."""
    out = torch.randn(n, generator=gen, dtype=torch.float64) * std
    for _ in range(8):
        bad = out.abs() > limit
        redraw = torch.randn(n, generator=gen, dtype=torch.float64) * std
        out = torch.where(bad, redraw, out)
    return out.clamp(-limit, limit)


def sample_pose(gen: torch.Generator, batch: int, settings: SamplingSettings) -> Tensor:
    """Head pose: (B, 3) pitch, yaw, roll in radians (float64).

    Yaw is uniform in ``[-max_yaw, max_yaw]`` except for a fraction ``extreme_yaw_fraction`` of the samples whose
    ``|yaw|`` is uniform in ``(max_yaw, extreme_yaw_limit]`` with a random sign; pitch and roll are zero-mean
    normals truncated at ``max_pitch`` / ``max_roll``.
    """
    s = settings
    extreme = torch.rand(batch, generator=gen, dtype=torch.float64) < s.extreme_yaw_fraction
    yaw_normal = _uniform(gen, batch, -s.max_yaw_deg, s.max_yaw_deg)
    sign = torch.where(torch.rand(batch, generator=gen, dtype=torch.float64) < 0.5, -1.0, 1.0).to(torch.float64)
    yaw_extreme = sign * _uniform(gen, batch, s.max_yaw_deg, s.extreme_yaw_limit_deg)
    yaw = torch.where(extreme, yaw_extreme, yaw_normal)
    pitch = _truncated_normal(gen, batch, s.pitch_std_deg, s.max_pitch_deg)
    roll = _truncated_normal(gen, batch, s.roll_std_deg, s.max_roll_deg)
    return torch.deg2rad(torch.stack([pitch, yaw, roll], dim=1))


def _expression_structure(names: tuple[str, ...]) -> tuple[dict[str, list[int]], dict[str, tuple[int, int]]] | None:
    """Groups ARKit-style names into ``base -> [indices]`` (``_L``/``_R`` sides together) and the gaze shapes.

    Returns None when the names are not ARKit-like (no ``_L``/``_R`` pairs), in which case the generic sparse
    sampler is used.
    """
    bases: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        base = name[:-2] if name.endswith(("_L", "_R")) else name
        bases.setdefault(base, []).append(i)
    if not any(len(v) == 2 for v in bases.values()):
        return None
    gaze: dict[str, tuple[int, int]] = {}
    for g in _GAZE_BASES:
        if g in bases and len(bases[g]) == 2:
            left = next(i for i in bases[g] if names[i].endswith("_L"))
            right = next(i for i in bases[g] if names[i].endswith("_R"))
            gaze[g] = (left, right)
            del bases[g]
    return bases, gaze


def _sample_blendshapes(gen: torch.Generator, names: tuple[str, ...], settings: SamplingSettings) -> Tensor:
    """One sparse ARKit-style weight vector (n_exp,) in [0, 1] (float64)."""
    n = len(names)
    w = torch.zeros(n, dtype=torch.float64)
    structure = _expression_structure(names)
    r = torch.rand(8, generator=gen, dtype=torch.float64)  # fixed number of draws for the top-level choices
    neutral = bool(r[0] < settings.neutral_fraction)
    k = 1 + int(torch.randint(0, settings.max_active_expressions, (1,), generator=gen))
    if structure is None:
        idx = torch.randperm(n, generator=gen)[:k]
        vals = _uniform(gen, k, 0.1, 1.0)
        if not neutral:
            w[idx] = vals
        return (w * settings.exp_scale).clamp(0.0, 1.0)

    bases, gaze = structure
    order = list(bases)
    perm = torch.randperm(len(order), generator=gen).tolist()
    vals = _uniform(gen, len(order), 0.15, 1.0) ** 0.8
    sym = torch.rand(len(order), generator=gen, dtype=torch.float64) < 0.7
    jitter = _uniform(gen, 2 * len(order), -0.15, 0.15)
    side_pick = torch.rand(len(order), generator=gen, dtype=torch.float64)
    if not neutral:
        chosen: list[str] = []
        for p in perm:
            if len(chosen) >= k:
                break
            base = order[p]
            if any((base == a and b in chosen) or (base == b and a in chosen) for a, b in _EXCLUSIVE_BASES):
                continue
            chosen.append(base)
            sides = bases[base]
            v = float(vals[p])
            if len(sides) == 1:
                w[sides[0]] = v
            elif bool(sym[p]):  # both sides, nearly equal
                w[sides[0]] = v + float(jitter[2 * p])
                w[sides[1]] = v + float(jitter[2 * p + 1])
            else:  # one side dominant
                main = 0 if float(side_pick[p]) < 0.5 else 1
                w[sides[main]] = v
                w[sides[1 - main]] = v * float(side_pick[p]) * 0.5
        # mouthClose closes the lips *against* an open jaw; alone it pushes them through each other.
        if "mouthClose" in bases and "jawOpen" in bases:
            jaw, close = bases["jawOpen"][0], bases["mouthClose"][0]
            w[close] = torch.minimum(w[close], w[jaw])
    # Gaze: both eyes turn the same way (eyeLookOut_L with eyeLookIn_R, eyeLookUp_L with eyeLookUp_R).
    horizontal = float(_uniform(gen, 1, -0.6, 0.6)) if bool(r[1] < 0.6) else 0.0
    vertical = float(_uniform(gen, 1, -0.5, 0.5)) if bool(r[2] < 0.4) else 0.0
    if {"eyeLookIn", "eyeLookOut"} <= gaze.keys() and horizontal != 0.0:
        if horizontal > 0:  # towards the subject's left
            w[gaze["eyeLookOut"][0]] = horizontal
            w[gaze["eyeLookIn"][1]] = horizontal
        else:
            w[gaze["eyeLookIn"][0]] = -horizontal
            w[gaze["eyeLookOut"][1]] = -horizontal
    if {"eyeLookUp", "eyeLookDown"} <= gaze.keys() and vertical != 0.0:
        l_, r_ = gaze["eyeLookUp"] if vertical > 0 else gaze["eyeLookDown"]
        w[l_] = abs(vertical)
        w[r_] = abs(vertical)
    return (w * settings.exp_scale).clamp(0.0, 1.0)


def sample_sh(gen: torch.Generator, batch: int, light_strength: float = 1.0) -> Tensor:
    """Plausible SH lighting, (B, 27) float64, Deep3D's channel-major layout without the +0.8 DC offset.

    Ambient: Deep3D's default DC (0.8) times a brightness factor uniform in ``[0.75, 1.2]`` and a per-channel
    tint (``N(0, 0.05)`` truncated at 0.12: a colour-temperature shift). Directional: 0, 1 or 2 distant lights
    (probabilities 0.15, 0.6, 0.25) from directions ``normalise(N(0, I) + (0, 0.4, 1))`` (mostly in front of and
    above the face), each the band 0-2 SH projection of a directional light (``gamma_k ~ Y_k(d)`` with
    ``Y_k = sh_basis / a_l``, Deep3D's sign convention), scaled so that the irradiance it adds facing the light is
    a fraction uniform in ``[0.15, 0.9] * light_strength`` of the ambient irradiance, with a slight colour
    (``1 + N(0, 0.04)`` per channel); 30 % of its DC term is taken back from the ambient so lit faces keep
    shadows rather than only getting brighter.
    """
    a_per_k = torch.tensor([SH_A[0]] + [SH_A[1]] * 3 + [SH_A[2]] * 5, dtype=torch.float64)
    ambient_irradiance = SH_DC_OFFSET * SH_A[0] / math.sqrt(4.0 * math.pi)  # 0.709: Deep3D's default light
    out = torch.zeros(batch, 3, 9, dtype=torch.float64)
    for b in range(batch):
        brightness = float(_uniform(gen, 1, 0.75, 1.2))
        tint = (torch.randn(3, generator=gen, dtype=torch.float64) * 0.05).clamp(-0.12, 0.12)
        out[b, :, 0] = SH_DC_OFFSET * (brightness * (1.0 + tint) - 1.0)
        u = float(torch.rand(1, generator=gen, dtype=torch.float64))
        n_lights = 0 if u < 0.15 else (1 if u < 0.75 else 2)
        for k in range(2):  # a fixed number of draws whatever n_lights is
            d = torch.randn(3, generator=gen, dtype=torch.float64) + torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
            d = d / d.norm().clamp_min(1e-6)
            fraction = float(_uniform(gen, 1, 0.15, 0.9)) * light_strength
            colour = 1.0 + (torch.randn(3, generator=gen, dtype=torch.float64) * 0.04).clamp(-0.1, 0.1)
            if k >= n_lights:
                continue
            basis_d = sh_basis(d[None]).to(torch.float64)[0]  # (9,) scaled basis at d
            y = basis_d / a_per_k  # unit SH functions at d
            gamma = y * (fraction * ambient_irradiance / float(basis_d @ y))
            out[b] += colour[:, None] * gamma[None, :]
            out[b, :, 0] -= 0.3 * float(gamma[0])
    return out.reshape(batch, 27)


def sample_params(
    face_model: FaceModel,
    batch: int,
    generator: torch.Generator,
    *,
    max_yaw_deg: float = 60.0,
    extreme_yaw_fraction: float = 0.1,
    extreme_yaw_limit_deg: float = 90.0,
    pitch_std_deg: float = 10.0,
    max_pitch_deg: float = 30.0,
    roll_std_deg: float = 6.0,
    max_roll_deg: float = 20.0,
    id_scale: float = 1.0,
    exp_scale: float = 1.0,
    tex_scale: float = 1.0,
    neutral_fraction: float = 0.1,
    max_active_expressions: int = 5,
    light_strength: float = 1.0,
    shift_std_mm: float = 8.0,
    max_shift_mm: float = 20.0,
    depth_range_mm: float = 80.0,
) -> FaceParams:
    """Random coefficients from the face model's prior and plausible pose, light and placement.

    Args:
        face_model: provides the layout, ``id_std``/``tex_std``, ``exp_kind`` and ``exp_names``.
        batch: number of faces B.
        generator: a CPU ``torch.Generator``; the result is a deterministic function of its state.
        max_yaw_deg: yaw is uniform in ``[-max_yaw, max_yaw]`` for most samples.
        extreme_yaw_fraction: fraction of samples with ``max_yaw < |yaw| <= extreme_yaw_limit_deg``.
        extreme_yaw_limit_deg: largest |yaw| (at most 90, a full profile).
        pitch_std_deg, max_pitch_deg: pitch ~ N(0, std) truncated at +-max.
        roll_std_deg, max_roll_deg: roll ~ N(0, std) truncated at +-max.
        id_scale: identity ``~ N(0, (id_scale * id_std)^2)`` per coefficient, truncated at 3 sigma.
        exp_scale: PCA expressions ``~ N(0, exp_scale^2)`` (truncated at 3); blendshape weights are multiplied
            by it (then clipped to [0, 1]).
        tex_scale: albedo ``~ N(0, (tex_scale * tex_std)^2)``, truncated at 3 sigma.
        neutral_fraction: fraction of blendshape samples with a neutral expression (gaze still varies).
        max_active_expressions: blendshape samples activate 1..max expression shapes (``_L``/``_R`` pairs count
            once, mutually exclusive shapes such as ``jawLeft``/``jawRight`` never together).
        light_strength: scales the directional light intensity (see :func:`sample_sh`).
        shift_std_mm, max_shift_mm: x/y translation ~ N(0, std) truncated at +-max (mm; 1 mm ~ 1 px at 224).
        depth_range_mm: z translation uniform in +-range (mm): a scale change of about +-range/1000.

    Returns:
        :class:`FaceParams` (float32, CPU) with B rows in ``face_model.layout``.
    """
    settings = SamplingSettings(
        max_yaw_deg=max_yaw_deg,
        extreme_yaw_fraction=extreme_yaw_fraction,
        extreme_yaw_limit_deg=extreme_yaw_limit_deg,
        pitch_std_deg=pitch_std_deg,
        max_pitch_deg=max_pitch_deg,
        roll_std_deg=roll_std_deg,
        max_roll_deg=max_roll_deg,
        id_scale=id_scale,
        exp_scale=exp_scale,
        tex_scale=tex_scale,
        neutral_fraction=neutral_fraction,
        max_active_expressions=max_active_expressions,
        light_strength=light_strength,
        shift_std_mm=shift_std_mm,
        max_shift_mm=max_shift_mm,
        depth_range_mm=depth_range_mm,
    )
    return _sample_params(face_model, batch, generator, settings)


def _sample_params(face_model: FaceModel, batch: int, gen: torch.Generator, s: SamplingSettings) -> FaceParams:
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    layout = face_model.layout
    id_std = face_model.id_std.detach().cpu().to(torch.float64)
    tex_std = face_model.tex_std.detach().cpu().to(torch.float64)
    ident = torch.stack([_truncated_normal(gen, layout.n_id, 1.0, 3.0) for _ in range(batch)]) * id_std * s.id_scale
    tex = torch.stack([_truncated_normal(gen, layout.n_tex, 1.0, 3.0) for _ in range(batch)]) * tex_std * s.tex_scale
    if face_model.exp_kind == "blendshape":
        exp = torch.stack([_sample_blendshapes(gen, tuple(face_model.exp_names), s) for _ in range(batch)])
    else:
        exp = torch.stack([_truncated_normal(gen, layout.n_exp, 1.0, 3.0) for _ in range(batch)]) * s.exp_scale
    angles = sample_pose(gen, batch, s)
    sh = sample_sh(gen, batch, s.light_strength)
    txy = torch.stack([_truncated_normal(gen, 2, s.shift_std_mm, s.max_shift_mm) for _ in range(batch)])
    tz = _uniform(gen, batch, -s.depth_range_mm, s.depth_range_mm)[:, None]
    trans = torch.cat([txy, tz], dim=1)
    f32 = torch.float32
    return FaceParams(
        id=ident.to(f32), exp=exp.to(f32), tex=tex.to(f32), angles=angles.to(f32), sh=sh.to(f32), trans=trans.to(f32)
    )


# ------------------------------------------------------------------------------------------------ backgrounds
def _gaussian_blur(img: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of a (C, H, W) image (reflect padding)."""
    if sigma < 0.3:
        return img
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=img.dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    c = img.shape[0]
    out = F.pad(img[None], (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return out[0]


def _random_colour(gen: torch.Generator) -> Tensor:
    """A random RGB colour (3,), sometimes desaturated (walls, sky, clothing)."""
    c = torch.rand(3, generator=gen)
    grey = c.mean()
    sat = float(torch.rand(1, generator=gen))
    return grey + (c - grey) * sat


def _value_noise(gen: torch.Generator, size: int, channels: int, octaves: int = 4) -> Tensor:
    """Multi-octave value noise in [0, 1], (channels, size, size)."""
    out = torch.zeros(channels, size, size)
    total = 0.0
    for o in range(octaves):
        n = 2 ** (o + 2)
        grid = torch.rand(1, channels, n + 1, n + 1, generator=gen)
        up = F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=True)[0]
        amp = 0.5**o
        out += amp * up
        total += amp
    return (out / total).clamp(0.0, 1.0)


def procedural_background(size: int, generator: torch.Generator) -> Tensor:
    """A random procedural background, (3, size, size) float32 RGB in [0, 1].

    A base layer (linear gradient, radial gradient or coloured value noise), optionally overlaid with soft
    ellipses (blobs), stripes or a checkerboard, a fine noise texture, and a defocus blur.
    """
    gen = generator
    full = size
    size = max(16, full // 2)  # drawn at half resolution (smooth content), upsampled at the end
    ys, xs = torch.meshgrid(
        torch.linspace(-1.0, 1.0, size), torch.linspace(-1.0, 1.0, size), indexing="ij"
    )  # (s, s) each
    r = torch.rand(8, generator=gen)
    c0, c1 = _random_colour(gen), _random_colour(gen)
    theta = float(torch.rand(1, generator=gen)) * 2.0 * math.pi
    centre = torch.rand(2, generator=gen) * 2.0 - 1.0
    kind = int(r[0] * 3)
    if kind == 0:
        t = ((xs * math.cos(theta) + ys * math.sin(theta)) * 0.5 + 0.5).clamp(0, 1)
    elif kind == 1:
        t = (((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2).sqrt() / 2.0).clamp(0, 1)
    else:
        t = _value_noise(gen, size, 1)[0]
    img = c0[:, None, None] * (1.0 - t) + c1[:, None, None] * t
    colour_noise = _value_noise(gen, size, 3)
    img = img + (colour_noise - 0.5) * 0.25 * float(r[1])

    # Overlays (draws are made whatever the branch so later draws do not shift with the branch taken).
    n_blobs = 2 + int(torch.randint(0, 8, (1,), generator=gen))
    blob_params = torch.rand(n_blobs, 6, generator=gen)
    blob_colours = torch.stack([_random_colour(gen) for _ in range(n_blobs)])
    freq = 2.0 + 14.0 * float(torch.rand(1, generator=gen))
    phase = float(torch.rand(1, generator=gen)) * 2.0 * math.pi
    stripe_colour = _random_colour(gen)
    overlay = float(r[2])
    if overlay < 0.4:  # blobs
        for p, col in zip(blob_params, blob_colours):
            cx, cy = p[0] * 2.4 - 1.2, p[1] * 2.4 - 1.2
            ax, ay = 0.1 + 0.6 * p[2], 0.1 + 0.6 * p[3]
            ang = float(p[4]) * math.pi
            dx, dy = xs - cx, ys - cy
            u = (dx * math.cos(ang) + dy * math.sin(ang)) / ax
            v = (-dx * math.sin(ang) + dy * math.cos(ang)) / ay
            alpha = torch.sigmoid((1.0 - (u * u + v * v)) * (4.0 + 20.0 * float(p[5])))
            img = img * (1.0 - alpha) + col[:, None, None] * alpha
    elif overlay < 0.6:  # stripes
        u = xs * math.cos(theta + 1.0) + ys * math.sin(theta + 1.0)
        alpha = (torch.sin(u * freq * math.pi + phase) > 0).float() * (0.3 + 0.5 * float(r[3]))
        img = img * (1.0 - alpha) + stripe_colour[:, None, None] * alpha
    elif overlay < 0.7:  # checkerboard
        u = xs * math.cos(theta) + ys * math.sin(theta)
        v = -xs * math.sin(theta) + ys * math.cos(theta)
        alpha = ((torch.sin(u * freq * math.pi) * torch.sin(v * freq * math.pi + phase)) > 0).float()
        alpha = alpha * (0.3 + 0.5 * float(r[3]))
        img = img * (1.0 - alpha) + stripe_colour[:, None, None] * alpha
    img = _gaussian_blur(img, 1.5 * float(r[5]) ** 2)
    if size != full:
        img = F.interpolate(img[None], size=(full, full), mode="bilinear", align_corners=False)[0]
    fine = torch.rand(1, full, full, generator=gen) - 0.5
    img = img + fine * 0.08 * float(r[4])
    return img.clamp(0.0, 1.0).to(torch.float32)


# ------------------------------------------------------------------------------------------------ rendering
@dataclass(frozen=True)
class RenderedFaces:
    """A batch of generated samples before storage.

    Attributes:
        images: (B, S, S, 3) uint8 RGB composites.
        skin: (B, S, S) uint8 skin mask (rendered coverage x per-vertex skin weight) x 255.
        params: (B, P) float32 flat coefficients in the face model's layout.
        landmarks: (B, 68, 2) float32 projected landmarks in pixels (x right, y down).
    """

    images: np.ndarray
    skin: np.ndarray
    params: np.ndarray
    landmarks: np.ndarray


def sample_seed(seed: int, index: int) -> int:
    """The 63-bit seed of sample ``index`` of a dataset seeded with ``seed`` (well mixed, order-free)."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got {seed}, {index}")
    state = np.random.SeedSequence([int(seed), int(index), SYNTHETIC_VERSION]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


# ------------------------------------------------------------------------------------------------ dataset
class SyntheticFaceDataset(Dataset[FaceSample]):
    """Faces rendered from a face model with random coefficients, pose, light and background.

    Args:
        face_model: the model to sample and render (its layout defines ``FaceSample.params``).
        num_samples: dataset length.
        seed: dataset seed; sample ``i`` depends only on ``(seed, i)`` and the settings.
        image_size: square crop size S in pixels.
        cache_dir: where generated shards are stored (``cache_dir/<key>/``); None generates on the fly.
        renderer_backend: ``"torch"`` (CPU reference), ``"nvdiffrast"`` (CUDA) or ``"auto"`` (nvdiffrast when
            generating on a CUDA device, else torch; see ``MeshRenderer``). The backends differ slightly
            (nvdiffrast antialiases silhouettes), so the backend is part of the cache key. Generate a GPU cache
            with :meth:`ensure_generated` in the main process: on-the-fly generation inside forked ``DataLoader``
            workers must render on the CPU (``device="cpu"``, ``renderer_backend="torch"``).
        max_yaw_deg: most samples have ``|yaw| <= max_yaw_deg``.
        extreme_yaw_fraction: fraction of samples beyond ``max_yaw_deg`` (up to ``extreme_yaw_limit_deg``).
        extreme_yaw_limit_deg: the largest |yaw|.
        shard_size: samples per cache shard (and per rendering batch).
        render_batch: faces rendered at once when generating.
        device: where generation renders (None: CUDA for ``"nvdiffrast"``, and for ``"auto"`` with a
            ``cache_dir`` when CUDA is available; else CPU).
        return_vertices: compute ``FaceSample.vertices`` (N, 3) from the stored coefficients.
        progress: show a tqdm progress bar while generating.
        head_context: paint a rough skull/hair and neck behind most faces (see :func:`_head_context`), so the
            network does not learn that a face ends where the background starts.
        **sampling: further keyword arguments of :func:`sample_params` (``pitch_std_deg``, ``id_scale``, ...).
    """

    def __init__(
        self,
        face_model: FaceModel,
        num_samples: int,
        seed: int = 0,
        image_size: int = 224,
        cache_dir: str | Path | None = None,
        renderer_backend: str = "torch",
        max_yaw_deg: float = 60.0,
        extreme_yaw_fraction: float = 0.1,
        extreme_yaw_limit_deg: float = 90.0,
        shard_size: int = 256,
        render_batch: int = 8,
        device: str | torch.device | None = None,
        return_vertices: bool = True,
        progress: bool = True,
        head_context: bool = True,
        **sampling: Any,
    ) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        if shard_size < 1 or render_batch < 1:
            raise ValueError(f"shard_size and render_batch must be >= 1, got {shard_size}, {render_batch}")
        unknown = set(sampling) - {f.name for f in dataclasses.fields(SamplingSettings)}
        if unknown:
            raise TypeError(f"SyntheticFaceDataset got unknown sampling settings {sorted(unknown)}")
        # A private CPU copy: the caller's model may later move to a GPU (Lightning moves the module's model in
        # place), and DataLoader workers must not touch CUDA tensors.
        self.face_model: FaceModel = copy.deepcopy(face_model).to("cpu").eval()
        self._device_model: FaceModel | None = None
        self._shape_basis: Tensor | None = None
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.renderer_backend = renderer_backend
        self.shard_size = int(shard_size)
        self.render_batch = int(render_batch)
        self.return_vertices = return_vertices
        self.progress = progress
        self.head_context = head_context
        self.settings = SamplingSettings(
            max_yaw_deg=max_yaw_deg,
            extreme_yaw_fraction=extreme_yaw_fraction,
            extreme_yaw_limit_deg=extreme_yaw_limit_deg,
            **sampling,
        )
        if renderer_backend not in ("torch", "nvdiffrast", "auto"):
            raise ValueError(f"renderer_backend must be 'torch', 'nvdiffrast' or 'auto', got {renderer_backend!r}")
        if device is None:
            # On-the-fly generation runs in DataLoader workers (forked: no CUDA there), so "auto" stays on the CPU.
            wants_gpu = renderer_backend == "nvdiffrast" or (
                renderer_backend == "auto" and cache_dir is not None and torch.cuda.is_available()
            )
            device = "cuda" if wants_gpu else "cpu"
        self.device = torch.device(device)
        # "auto" resolves by device (as MeshRenderer does): the cache key names the backend that renders.
        self.resolved_backend = (
            renderer_backend
            if renderer_backend != "auto"
            else ("nvdiffrast" if self.device.type == "cuda" else "torch")
        )
        self._renderer: MeshRenderer | None = None
        self._shards: dict[int, dict[str, np.ndarray]] = {}
        self._model_id: str | None = None
        self.cache_root = None if cache_dir is None else Path(cache_dir) / self.cache_key()

    # ------------------------------------------------------------------------------------- identity / cache
    def face_model_id(self) -> str:
        """:meth:`FaceModel.fingerprint` (name, layout, coefficient names, buffers) plus the camera (16 hex digits)."""
        if self._model_id is None:
            h = hashlib.sha256(f"{self.face_model.fingerprint()}|{self.face_model.camera}".encode())
            self._model_id = h.hexdigest()[:16]
        return self._model_id

    def settings_dict(self) -> dict[str, Any]:
        """Every setting the generated content depends on (what the cache key hashes)."""
        return {
            "version": SYNTHETIC_VERSION,
            "face_model": self.face_model.name,
            "face_model_id": self.face_model_id(),
            "seed": self.seed,
            "image_size": self.image_size,
            "shard_size": self.shard_size,
            "renderer_backend": self.resolved_backend,
            "head_context": self.head_context,
            "sampling": dataclasses.asdict(self.settings),
        }

    def cache_key(self) -> str:
        """``<model name>_s<seed>_<size>px_<hash>``: the cache sub-directory of these settings."""
        blob = json.dumps(self.settings_dict(), sort_keys=True).encode()
        digest = hashlib.sha256(blob).hexdigest()[:16]
        return f"{self.face_model.name}_s{self.seed}_{self.image_size}px_{digest}"

    @property
    def num_shards(self) -> int:
        return (self.num_samples + self.shard_size - 1) // self.shard_size

    def _shard_count(self, shard: int) -> int:
        """How many samples of ``shard`` this dataset needs."""
        return min(self.shard_size, self.num_samples - shard * self.shard_size)

    def _shard_dir(self, shard: int) -> Path:
        assert self.cache_root is not None
        return self.cache_root / f"shard_{shard:05d}"

    def shard_is_valid(self, shard: int, check_hashes: bool = True) -> bool:
        """Whether shard ``shard`` is complete on disk (``done.json`` present and matching its files)."""
        if self.cache_root is None:
            return False
        directory = self._shard_dir(shard)
        try:
            done = json.loads((directory / _DONE).read_text())
            if int(done["count"]) < self._shard_count(shard) or done.get("settings_key") != self.cache_key():
                return False
            for name in _SHARD_FILES:
                path = directory / name
                info = done["files"][name]
                if path.stat().st_size != int(info["size"]):
                    return False
                if check_hashes and sha256_file(path) != info["sha256"]:
                    return False
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return True

    def ensure_generated(self, check_hashes: bool = True) -> int:
        """Generates every missing or damaged shard (no-op without ``cache_dir``).

        Args:
            check_hashes: verify the SHA-256 of existing shards (else only their sizes and ``done.json``).

        Returns:
            The number of shards (re)generated.
        """
        if self.cache_root is None:
            return 0
        self._prepare_root()
        self._remove_stale_tmp()
        todo = [k for k in range(self.num_shards) if not self.shard_is_valid(k, check_hashes=check_hashes)]
        if not todo:
            return 0
        total = sum(self._shard_count(k) for k in todo)
        log.info("synthetic: generating %d samples (%d shards) into %s", total, len(todo), self.cache_root)
        bar = progress_bar(total=total, desc=f"synthetic {self.cache_key()}", unit="face", enabled=self.progress)
        t0 = time.perf_counter()
        for k in todo:
            self._write_shard(k, bar)
        bar.close()
        dt = time.perf_counter() - t0
        log.info("synthetic: %d samples in %.1f s (%.3f s/sample)", total, dt, dt / max(total, 1))
        return len(todo)

    def _prepare_root(self) -> None:
        """Creates the cache directory and its human-readable ``settings.json``."""
        assert self.cache_root is not None
        self.cache_root.mkdir(parents=True, exist_ok=True)
        settings_file = self.cache_root / "settings.json"
        if not settings_file.exists():
            atomic_write_text(settings_file, json.dumps(self.settings_dict(), indent=2, sort_keys=True))

    def _remove_stale_tmp(self) -> None:
        """Deletes leftovers of interrupted writes (temporary shard directories older than an hour)."""
        assert self.cache_root is not None
        now = time.time()
        for tmp in self.cache_root.glob(".tmp_shard_*"):
            try:
                if now - tmp.stat().st_mtime > 3600:
                    shutil.rmtree(tmp, ignore_errors=True)
            except OSError:
                pass

    def _write_shard(self, shard: int, bar: Any = None) -> None:
        assert self.cache_root is not None
        start = shard * self.shard_size
        count = self._shard_count(shard)
        parts: list[RenderedFaces] = []
        for b0 in range(start, start + count, self.render_batch):
            idx = list(range(b0, min(b0 + self.render_batch, start + count)))
            parts.append(self.generate(idx))
            if bar is not None:
                bar.update(len(idx))
        arrays = {
            "images.npy": np.concatenate([p.images for p in parts]),
            "skin.npy": np.concatenate([p.skin for p in parts]),
            "params.npy": np.concatenate([p.params for p in parts]),
            "landmarks.npy": np.concatenate([p.landmarks for p in parts]),
        }
        final = self._shard_dir(shard)
        self._prepare_root()
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp_shard_{shard:05d}_", dir=self.cache_root))
        try:
            files: dict[str, dict[str, Any]] = {}
            for name, arr in arrays.items():
                path = tmp / name
                with open(path, "wb") as fh:
                    np.save(fh, arr, allow_pickle=False)
                    fh.flush()
                    os.fsync(fh.fileno())
                files[name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
            done = {"count": count, "start": start, "settings_key": self.cache_key(), "files": files}
            (tmp / _DONE).write_text(json.dumps(done, indent=1))
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; a shared cache must stay readable
            if final.exists():  # damaged or too small: replace it
                shutil.rmtree(final)
            try:
                os.rename(tmp, final)
            except OSError:
                if not self.shard_is_valid(shard, check_hashes=False):  # not a concurrent writer's valid shard
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        self._shards.pop(shard, None)

    # ------------------------------------------------------------------------------------- generation
    def _generation_model(self) -> FaceModel:
        """The face model on the generation device (the CPU copy itself when generating on the CPU)."""
        if self.device.type == "cpu":
            return self.face_model
        if self._device_model is None:
            self._device_model = copy.deepcopy(self.face_model).to(self.device)
        return self._device_model

    def _get_renderer(self) -> MeshRenderer:
        if self._renderer is None:
            self._renderer = MeshRenderer(backend=self.renderer_backend, antialias=True)
        return self._renderer

    @torch.no_grad()
    def generate(self, indices: list[int]) -> RenderedFaces:
        """Generates the samples ``indices`` (rendered together as one batch).

        Returns:
            :class:`RenderedFaces` (uint8 images and masks, float32 coefficients and landmarks).
        """
        size = self.image_size
        params_list: list[FaceParams] = []
        backgrounds: list[Tensor] = []
        extras: list[Tensor] = []
        contexts: list[tuple[Tensor, Tensor]] = []
        for i in indices:
            gen = torch.Generator().manual_seed(sample_seed(self.seed, i))
            params_list.append(_sample_params(self.face_model, 1, gen, self.settings))
            backgrounds.append(procedural_background(size, gen))
            extras.append(torch.rand(6, generator=gen))  # mouth cavity colour and sensor noise
            contexts.append((torch.rand(12, generator=gen), _value_noise(gen, max(16, size // 2), 1, octaves=3)))
        params = FaceParams.cat(params_list)
        model = self._generation_model()
        face = model(params.to(self.device), size)
        tri = model.tri_int32
        # The skin weight rides along as a fourth colour channel: interpolated, antialiased and premultiplied by
        # the coverage exactly like the image.
        skin_w = model.skin_mask.to(self.device, face.color.dtype)
        colors = torch.cat([face.color, skin_w[None, :, None].expand(face.color.shape[0], -1, 1)], dim=-1)
        out = self._get_renderer().forward(face.clip, tri, colors, None, resolution=size)
        image = out.image[:, :3].float().cpu()
        skin = out.image[:, 3].float().cpu().clamp(0.0, 1.0)
        coverage = out.mask.float().cpu().clamp(0.0, 1.0)
        landmarks = face.landmarks_2d.float().cpu()

        out_images = []
        for b in range(len(indices)):
            if self.head_context:
                face_px = skin[b] > 0.5
                skin_rgb = image[b][:, face_px].mean(dim=1) if bool(face_px.any()) else torch.tensor([0.5, 0.38, 0.32])
                bg = _head_context(backgrounds[b], landmarks[b], skin_rgb, *contexts[b])
            else:
                bg = backgrounds[b]
            cavity = _mouth_cavity(landmarks[b], size)  # (S, S) in [0, 1]
            e = extras[b]
            cavity_colour = torch.tensor([0.25, 0.08, 0.08]) * (0.3 + 0.9 * e[:3])
            behind = bg * (1.0 - cavity) + cavity_colour[:, None, None] * cavity
            composite = image[b] + (1.0 - coverage[b]) * behind
            noise_sigma = 0.015 * float(e[3]) ** 2
            if noise_sigma > 0:
                gen = torch.Generator().manual_seed(sample_seed(self.seed, indices[b]) ^ 0x5EED)
                composite = composite + torch.randn(composite.shape, generator=gen) * noise_sigma
            out_images.append(_to_uint8(composite.permute(1, 2, 0)))
        layout = model.layout
        return RenderedFaces(
            images=np.stack(out_images),
            skin=_to_uint8(skin).numpy(),
            params=layout.join(params).numpy().astype(np.float32),
            landmarks=landmarks.numpy().astype(np.float32),
        )

    # ------------------------------------------------------------------------------------- Dataset API
    def __len__(self) -> int:
        return self.num_samples

    def _load_shard(self, shard: int) -> dict[str, np.ndarray]:
        if shard not in self._shards:
            if not self.shard_is_valid(shard, check_hashes=False):
                self._write_shard(shard)
            directory = self._shard_dir(shard)
            try:
                self._shards[shard] = {
                    name[:-4]: np.load(directory / name, mmap_mode="r", allow_pickle=False) for name in _SHARD_FILES
                }
            except (OSError, ValueError) as exc:
                raise RuntimeError(f"{directory}: cannot read synthetic cache shard ({exc}); delete it") from exc
        return self._shards[shard]

    def raw(self, index: int) -> RenderedFaces:
        """Sample ``index`` as stored (uint8 image and mask, float32 coefficients and landmarks), batch of 1."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for a synthetic dataset of {self.num_samples}")
        if self.cache_root is None:
            return self.generate([index])
        shard, row = divmod(index, self.shard_size)
        data = self._load_shard(shard)
        return RenderedFaces(
            images=np.array(data["images"][row : row + 1]),
            skin=np.array(data["skin"][row : row + 1]),
            params=np.array(data["params"][row : row + 1]),
            landmarks=np.array(data["landmarks"][row : row + 1]),
        )

    def __getitem__(self, index: int) -> FaceSample:
        """Sample ``index`` as a :class:`FaceSample` (image (3, S, S) float in [0, 1], ground truth attached)."""
        index = int(index)
        if index < 0:
            index += self.num_samples
        raw = self.raw(index)
        flat = torch.from_numpy(raw.params[0].copy())
        params = self.face_model.layout.split(flat[None])
        vertices = None
        if self.return_vertices:
            vertices = self._posed_vertices(params)
        return FaceSample(
            image=torch.from_numpy(raw.images[0].copy()).permute(2, 0, 1).float().div_(255.0),
            landmarks=torch.from_numpy(raw.landmarks[0].copy()),
            crop_to_image=torch.eye(3),
            params=flat,
            vertices=vertices,
            yaw=float(torch.rad2deg(params.angles[0, 1])),
            skin_mask=torch.from_numpy(raw.skin[0].copy()).float().div_(255.0)[None],
            source=f"synthetic:{self.seed}:{index}",
        )

    @torch.no_grad()
    def _posed_vertices(self, params: FaceParams) -> Tensor:
        """(N, 3) posed vertices in mm of one sample, ``R (mean + id_basis id + exp_basis exp) + trans``.

        Same as ``face_model.transform(face_model.shape(id, exp), angles, trans)`` but through one matrix-vector
        product with a cached, contiguous ``(3N, n_id + n_exp)`` basis and one (N, 3) x (3, 3) product (the
        einsum path copies the bases on each call, which dominated the loading time of a cached sample).
        """
        model = self.face_model
        if self._shape_basis is None:
            n = model.n_vertices
            self._shape_basis = torch.cat([model.id_basis, model.exp_basis], dim=2).reshape(3 * n, -1).contiguous()
        coeffs = torch.cat([params.id[0], params.exp[0]])
        shape = model.mean_shape + (self._shape_basis @ coeffs).view(-1, 3)
        rot = euler_to_matrix(params.angles)[0]  # (3, 3), v' = R v
        return torch.addmm(params.trans[0][None, :], shape, rot.T).float()

    def __getstate__(self) -> dict[str, Any]:
        """Pickling for DataLoader workers: memory maps and the renderer are reopened in the worker."""
        state = self.__dict__.copy()
        state["_shards"] = {}
        state["_renderer"] = None
        state["_device_model"] = None
        state["_shape_basis"] = None
        return state


# ------------------------------------------------------------------------------------------------ helpers
#: Hair colours (RGB in [0, 1]): black, dark brown, brown, light brown, blond, auburn, grey.
_HAIR_RGB = torch.tensor(
    [
        [0.05, 0.04, 0.04],
        [0.16, 0.10, 0.07],
        [0.30, 0.20, 0.13],
        [0.45, 0.33, 0.22],
        [0.70, 0.58, 0.38],
        [0.45, 0.20, 0.10],
        [0.55, 0.55, 0.55],
    ]
)


def _head_context(background: Tensor, landmarks: Tensor, skin_rgb: Tensor, r: Tensor, texture: Tensor) -> Tensor:
    """Paints a rough skull (hair or bald) and a neck onto the background, placed from the face's landmarks.

    The rendered mesh is the face only (forehead to chin); real aligned crops show hair, the back of the head and
    the neck around it. This layer goes *behind* the render (the composite only shows it where the face does not
    cover), so it never changes a label.

    Args:
        background: (3, S, S) background.
        landmarks: (68, 2) projected landmarks (pixels) of this face.
        skin_rgb: (3,) mean rendered skin colour (neck and bald skull colour).
        r: (12,) uniform draws of this sample.
        texture: (1, s, s) value noise in [0, 1] (hair texture), any s.

    Returns:
        (3, S, S) background with the head context, or ``background`` for the 25 % of samples without it.
    """
    if float(r[0]) < 0.25 or not bool(torch.isfinite(landmarks).all()):
        return background
    size = background.shape[-1]
    chin, nasion, nose = landmarks[8], landmarks[27], landmarks[30]
    jaw_mid = 0.5 * (landmarks[0] + landmarks[16])
    up = nasion - chin
    face_h = float(up.norm().clamp_min(1.0))
    up = up / face_h
    side = torch.stack([-up[1], up[0]])  # perpendicular to ``up`` (image x for an upright face)
    width = max(float((landmarks[16] - landmarks[0]).norm()), 0.75 * face_h)
    # The skull sits behind the face: centred a little above the nasion and shifted sideways away from where the
    # nose points (yaw turns the back of the head to the other side).
    turn = float((nose - jaw_mid) @ side)
    centre = nasion + up * (0.1 * face_h) - side * (1.2 * turn)
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    dx, dy = xs - float(centre[0]), ys - float(centre[1])
    a = (dx * float(side[0]) + dy * float(side[1])) / (0.6 * width * (0.95 + 0.3 * float(r[1])))
    b = (dx * float(up[0]) + dy * float(up[1])) / (1.0 * face_h * (0.95 + 0.25 * float(r[2])))
    skull = torch.sigmoid((1.0 - (a * a + b * b)) * 12.0)
    tex = F.interpolate(texture[None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    if float(r[3]) < 0.1:  # bald
        head_rgb = skin_rgb * (0.85 + 0.2 * float(r[4]))
        head = head_rgb[:, None, None] * (0.9 + 0.2 * tex)
    else:
        hair = _HAIR_RGB[int(float(r[4]) * len(_HAIR_RGB)) % len(_HAIR_RGB)] * (0.7 + 0.6 * float(r[5]))
        head = hair[:, None, None] * (0.6 + 0.8 * tex)
        # long hair: extend the hair region down the sides of the face
        if float(r[6]) < 0.4:
            below = (dx * float(up[0]) + dy * float(up[1])) < 0
            drop = torch.sigmoid((1.0 - a.abs()) * 10.0) * torch.sigmoid((1.4 * face_h + (b * 1.05 * face_h)) / 6.0)
            skull = torch.where(below, torch.maximum(skull, drop), skull)
    # Neck: a band from under the chin down to the image border, narrower than the face, in shadow.
    ndx, ndy = xs - float(chin[0]), ys - float(chin[1])
    along = -(ndx * float(up[0]) + ndy * float(up[1]))  # distance below the chin
    across = (ndx * float(side[0]) + ndy * float(side[1])) / (0.33 * width * (0.85 + 0.3 * float(r[7])))
    neck = torch.sigmoid((1.0 - across.abs()) * 8.0) * torch.sigmoid((along + 0.3 * face_h) / 3.0)
    neck_rgb = skin_rgb * (0.55 + 0.3 * float(r[8]))
    out = background * (1.0 - neck) + neck_rgb[:, None, None] * neck
    out = out * (1.0 - skull) + head.clamp(0.0, 1.0) * skull
    return out.clamp(0.0, 1.0)


def _mouth_cavity(landmarks: Tensor, size: int) -> Tensor:
    """Soft mask (S, S) of the inner-lip polygon (what shows through an open mouth, which is not rendered)."""
    pts = landmarks[list(INNER_LIP)].numpy().astype(np.float64)
    mask = np.zeros((size, size), dtype=np.uint8)
    if not np.isfinite(pts).all():
        return torch.zeros(size, size)
    shift = 4
    poly = np.round(pts * (1 << shift)).astype(np.int32)
    cv2.fillPoly(mask, [poly], 255, lineType=cv2.LINE_AA, shift=shift)
    return torch.from_numpy(mask.astype(np.float32) / 255.0)


def _to_uint8(x: Tensor) -> Tensor:
    return (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def visible_landmarks(
    landmarks_2d: Tensor, landmarks_depth: Tensor, depth_map: Tensor, coverage: Tensor, tol_mm: float = 6.0
) -> Tensor:
    """Which projected landmarks are visible (not occluded by the face itself, inside the image and mask).

    Args:
        landmarks_2d: (B, 68, 2) pixel coordinates (x right, y down).
        landmarks_depth: (B, 68) distance of the landmark vertices from the camera along the view axis, mm.
        depth_map: (B, 1, H, W) rendered depth in mm (0 where empty).
        coverage: (B, 1, H, W) rendered coverage in [0, 1].
        tol_mm: a landmark is visible when it is at most this far behind the rendered surface at its pixel.

    Returns:
        (B, 68) bool.
    """
    b, _, h, w = depth_map.shape
    j = landmarks_2d[..., 0].round().long()
    i = landmarks_2d[..., 1].round().long()
    inside = (j >= 0) & (j < w) & (i >= 0) & (i < h)
    jc, ic = j.clamp(0, w - 1), i.clamp(0, h - 1)
    bi = torch.arange(b)[:, None].expand_as(jc)
    d = depth_map[bi, 0, ic, jc]
    cov = coverage[bi, 0, ic, jc]
    return inside & (cov > 0.5) & (landmarks_depth <= d + tol_mm)


# ------------------------------------------------------------------------------------------------ preview / speed
def sample_grid(
    dataset: SyntheticFaceDataset, indices: list[int], columns: int = 4, draw_landmarks: bool = True
) -> np.ndarray:
    """A picture of samples with their 68 landmarks (green dots) and yaw, (rows * S, columns * S, 3) uint8 RGB."""
    tiles = []
    for i in indices:
        raw = dataset.raw(i)
        tile = np.ascontiguousarray(raw.images[0])
        if draw_landmarks:
            for x, y in raw.landmarks[0]:
                cv2.circle(tile, (round(float(x) * 4), round(float(y) * 4)), 4, (40, 255, 40), -1, cv2.LINE_AA, shift=2)
        yaw = math.degrees(float(dataset.face_model.layout.split(torch.from_numpy(raw.params)).angles[0, 1]))
        cv2.putText(tile, f"yaw {yaw:+.0f}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[r : r + columns], axis=1) for r in range(0, len(tiles), columns)]
    return np.concatenate(rows, axis=0)


def main(argv: list[str] | None = None) -> int:
    """``python -m msma.data.synthetic``: writes a preview grid and/or measures the generation speed."""
    import argparse
    import platform

    from msma.face_model import load_face_model

    parser = argparse.ArgumentParser(prog="python -m msma.data.synthetic", description=main.__doc__)
    parser.add_argument("--grid", type=Path, help="write a PNG grid of samples with landmarks here")
    parser.add_argument("--num", type=int, default=16, help="samples in the grid")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--speed", type=int, default=0, help="time the generation of this many samples")
    parser.add_argument("--batch", type=int, default=8, help="render batch for --speed")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model = load_face_model("ict")
    ds = SyntheticFaceDataset(
        model, max(args.num, args.speed), seed=args.seed, image_size=args.size, renderer_backend=args.backend
    )
    if args.grid is not None:
        grid = sample_grid(ds, list(range(args.num)))
        args.grid.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(args.grid), grid[..., ::-1]):
            raise OSError(f"cannot write {args.grid}")
        print(f"wrote {args.grid} ({grid.shape[1]}x{grid.shape[0]})")
    if args.speed > 0:
        ds.generate([0])  # warm-up
        t0 = time.perf_counter()
        for b0 in range(0, args.speed, args.batch):
            ds.generate(list(range(b0, min(b0 + args.batch, args.speed))))
        dt = time.perf_counter() - t0
        print(
            f"generated {args.speed} samples at {args.size}px, batch {args.batch}, backend {args.backend}: "
            f"{dt / args.speed:.3f} s/sample ({args.speed / dt:.2f} samples/s) on {platform.processor() or 'cpu'}, "
            f"{torch.get_num_threads()} torch threads"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
