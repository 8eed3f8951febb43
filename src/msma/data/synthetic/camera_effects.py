"""Camera effects on the final composite: exposure and gamma, colour casts (white balance), defocus and motion
blur, sensor noise (signal-dependent and read noise), vignetting, low resolution and JPEG compression.

They change pixels only: every label (landmarks, coefficients, skin mask) stays as rendered.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

EFFECTS = ("exposure", "colour_cast", "defocus", "motion_blur", "noise", "vignette", "low_resolution", "jpeg")
#: Probability of each effect per sample.
EFFECT_P = {
    "exposure": 0.7,
    "colour_cast": 0.6,
    "defocus": 0.25,
    "motion_blur": 0.15,
    "noise": 0.6,
    "vignette": 0.25,
    "low_resolution": 0.2,
    "jpeg": 0.5,
}


def _disk_kernel(radius: float) -> Tensor:
    r = max(radius, 0.5)
    k = int(math.ceil(r))
    y, x = torch.meshgrid(torch.arange(-k, k + 1.0), torch.arange(-k, k + 1.0), indexing="ij")
    w = (r + 0.5 - torch.sqrt(x * x + y * y)).clamp(0.0, 1.0)
    return w / w.sum()


def _line_kernel(length: float, angle: float) -> Tensor:
    k = int(math.ceil(length / 2))
    ker = np.zeros((2 * k + 1, 2 * k + 1), np.float32)
    d = np.array([math.cos(angle), math.sin(angle)]) * length / 2
    cv2.line(
        ker,
        (int((k - d[0]) * 16), int((k - d[1]) * 16)),
        (int((k + d[0]) * 16), int((k + d[1]) * 16)),
        1.0,
        1,
        cv2.LINE_AA,
        4,
    )
    t = torch.from_numpy(ker)
    return t / t.sum().clamp_min(1e-6)


def _conv(img: Tensor, kernel: Tensor) -> Tensor:
    k = kernel.shape[-1] // 2
    x = F.pad(img[None], (k, k, k, k), mode="replicate")
    return F.conv2d(x, kernel[None, None].expand(3, 1, -1, -1).contiguous(), groups=3)[0]


def jpeg(img: Tensor, quality: int) -> Tensor:
    """JPEG round trip of a (3, S, S) image in [0, 1] (OpenCV, 4:2:0 chroma subsampling)."""
    u8 = (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(u8, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV failure
        return img
    raw = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if raw is None:  # pragma: no cover - OpenCV failure
        return img
    dec = cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)
    return torch.from_numpy(dec).permute(2, 0, 1).float() / 255.0


def apply_camera_effects(
    img: Tensor, r: Tensor, noise: Tensor, strength: float = 1.0, effects: tuple[str, ...] = EFFECTS
) -> Tensor:
    """Applies the sampled camera effects to one image.

    Args:
        img: (3, S, S) composite in [0, 1] (linear-ish render values).
        r: (len(EFFECTS), 4) uniform draws; column 0 decides whether each effect applies.
        noise: (3, S, S) standard normal draws (sensor noise).
        strength: multiplier of the effect probabilities (0 disables all effects).
        effects: which effects may apply.

    Returns:
        (3, S, S) image in [0, 1].
    """
    size = img.shape[-1]
    out = img.clamp(0.0, 1.0)
    p = {e: EFFECT_P[e] * strength if e in effects else 0.0 for e in EFFECTS}
    row = {e: r[i] for i, e in enumerate(EFFECTS)}

    def on(e: str) -> bool:
        return float(row[e][0]) < p[e]

    if on("exposure"):
        ev = (float(row["exposure"][1]) - 0.55) * 1.6  # -0.9 .. +0.7 stops
        gamma = 0.8 + 0.45 * float(row["exposure"][2])
        out = (out * 2.0**ev).clamp(0.0, 1.0) ** gamma
    if on("colour_cast"):
        warm = (float(row["colour_cast"][1]) - 0.5) * 0.35  # tungsten (warm) .. shade (cool)
        tint = (float(row["colour_cast"][2]) - 0.5) * 0.15  # green .. magenta
        gains = torch.tensor([1.0 + warm, 1.0 - tint, 1.0 - warm])
        out = (out * gains[:, None, None]).clamp(0.0, 1.0)
    if on("defocus"):
        out = _conv(out, _disk_kernel(0.5 + 2.0 * float(row["defocus"][1]) * size / 224))
    if on("motion_blur"):
        out = _conv(
            out,
            _line_kernel(2.0 + 7.0 * float(row["motion_blur"][1]) * size / 224, math.pi * float(row["motion_blur"][2])),
        )
    if on("vignette"):
        y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        out = out * (1.0 - 0.45 * float(row["vignette"][1]) * ((x * x + y * y) / 2.0))[None]
    if on("low_resolution"):
        small = max(16, int(size * (0.3 + 0.5 * float(row["low_resolution"][1]))))
        out = F.interpolate(
            F.interpolate(out[None], size=(small, small), mode="area"),
            size=(size, size),
            mode="bilinear",
            align_corners=False,
        )[0]
    if on("noise"):
        read = 0.002 + 0.025 * float(row["noise"][1]) ** 2
        shot = 0.0015 * float(row["noise"][2]) ** 2
        sigma = torch.sqrt(read**2 + shot * out.clamp_min(0.0))
        if float(row["noise"][3]) < 0.5:  # luminance noise (same in all channels), else per-channel chroma noise
            out = out + sigma * noise[0:1]
        else:
            out = out + sigma * noise
    out = out.clamp(0.0, 1.0)
    if on("jpeg"):
        out = jpeg(out, int(15 + 80 * float(row["jpeg"][1])))
    return out
