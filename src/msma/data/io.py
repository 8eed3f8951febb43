"""Safe photo loading: any image file -> float32 RGB in [0, 1], or a :class:`BadImageError` saying why not.

Policy (the same for every dataset):

* unreadable (missing, permission), zero-byte, not an image, truncated/corrupt -> :class:`BadImageError`;
* grayscale / palette / CMYK / 16-bit / float images -> converted to 8-bit-range float RGB (logged at debug);
* RGBA / LA / transparent palette -> alpha-composited over a white background;
* EXIF orientation -> applied (the returned pixels are upright, as a viewer shows them);
* smaller than ``min_side`` (32 px) on either side -> rejected (``too_small``);
* larger than ``max_side`` (8192 px) on either side -> downscaled (area resampling) so the longer side is
  ``max_side``, with a logged reason; :attr:`LoadedImage.scale` records the factor so results map back;
* more than twice Pillow's ``MAX_IMAGE_PIXELS`` (a decompression bomb: ~179 Mpx by default) -> rejected
  (``too_large``); JPEGs above ``max_side`` are decoded at a reduced scale (``draft``) before downscaling.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from msma.utils.files import NotARegularFileError, require_regular_file

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger(__name__)

#: Images with a side below this are rejected (no face fits usefully in fewer pixels).
MIN_SIDE = 32
#: Images with a side above this are downscaled on load.
MAX_SIDE = 8192
#: File name suffixes treated as photos by the folder datasets (lower case).
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".ppm",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
    ".avif",
)
#: Photo formats msma cannot decode (Pillow without plugins): HEIC / HEIF (phones' default), JPEG XL and camera raw
#: files. Folder listings name them as skipped instead of passing them over in silence.
UNREADABLE_PHOTO_EXTENSIONS: tuple[str, ...] = (
    ".heic",
    ".heif",
    ".jxl",
    ".dng",
    ".cr2",
    ".cr3",
    ".nef",
    ".arw",
    ".raf",
    ".orf",
    ".rw2",
)

# Stable reason codes (used as counters in summaries and as cache skip reasons).
REASON_MISSING = "missing"
REASON_UNREADABLE = "unreadable"
REASON_ZERO_BYTE = "zero_byte"
REASON_NOT_AN_IMAGE = "not_an_image"
REASON_TRUNCATED = "truncated"
REASON_TOO_SMALL = "too_small"
REASON_TOO_LARGE = "too_large"
REASON_NO_PIXEL_VALUES = "no_pixel_values"
#: A photo in a format msma cannot decode (:data:`UNREADABLE_PHOTO_EXTENSIONS`); its detail says to convert it.
REASON_UNSUPPORTED = "unsupported"
#: Every reason code of :class:`BadImageError`: the file itself cannot serve as a photo.
IMAGE_REASONS: frozenset[str] = frozenset(
    {
        REASON_MISSING,
        REASON_UNREADABLE,
        REASON_ZERO_BYTE,
        REASON_NOT_AN_IMAGE,
        REASON_TRUNCATED,
        REASON_TOO_SMALL,
        REASON_TOO_LARGE,
        REASON_NO_PIXEL_VALUES,
        REASON_UNSUPPORTED,
    }
)


class _NoPixelValues(ValueError):
    """A floating-point image without a single finite pixel (NaN / inf everywhere)."""


class BadImageError(ValueError):
    """A file that cannot be used as a photo.

    Attributes:
        path: the offending file.
        reason: a stable reason code (``"zero_byte"``, ``"truncated"``, ``"too_small"``, ...).
        detail: a human-readable explanation.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, detail: str = "") -> None:
        self.path = Path(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {reason}" + (f" ({detail})" if detail else ""))

    def __reduce__(self) -> tuple[type[BadImageError], tuple[Path, str, str]]:
        # Picklable across DataLoader worker processes.
        return (BadImageError, (self.path, self.reason, self.detail))


@dataclass(frozen=True)
class LoadedImage:
    """A decoded photo.

    Attributes:
        image: (H, W, 3) float32 RGB in [0, 1], upright (EXIF orientation applied), possibly downscaled.
        path: the source file.
        original_size: (height, width) of the upright image before any downscaling, pixels.
        scale: loaded size / original size (1.0 unless the image was larger than ``max_side``). A point
            ``x_loaded`` maps to the original image by ``(x_loaded + 0.5) / scale - 0.5`` (pixel-index units).
        notes: conversions applied (``"grayscale"``, ``"alpha"``, ``"16bit"``, ``"exif_rotated"``,
            ``"downscaled"``, ...).
    """

    image: np.ndarray
    path: Path
    original_size: tuple[int, int]
    scale: float = 1.0
    notes: tuple[str, ...] = ()

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    def as_uint8(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB (what dlib and OpenCV detectors take)."""
        return np.ascontiguousarray(np.clip(np.rint(self.image * 255.0), 0, 255).astype(np.uint8))

    def loaded_to_original(self) -> np.ndarray:
        """(3, 3) float64 affine from loaded-image pixel coordinates to original-image pixel coordinates."""
        s = 1.0 / self.scale
        return np.array([[s, 0.0, 0.5 * s - 0.5], [0.0, s, 0.5 * s - 0.5], [0.0, 0.0, 1.0]])


def _over_white(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) float RGBA in [0, 1] -> (H, W, 3) float32 RGB composited over a white background."""
    alpha = rgba[..., 3:4]
    return (rgba[..., :3] * alpha + (1.0 - alpha)).astype(np.float32)


def _to_float_rgb(img: Image.Image, notes: list[str]) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) float32 in [0, 1]."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale (PNG/TIFF decode to "I;16" or 32-bit "I" holding 0..65535).
        arr = np.asarray(img).astype(np.float64)
        notes.append("16bit")
        notes.append("grayscale")
        arr = np.clip(arr / 65535.0, 0.0, 1.0)
        return np.repeat(arr[..., None], 3, axis=2).astype(np.float32)
    if mode == "F":
        arr = np.asarray(img).astype(np.float64)
        notes.append("float")
        notes.append("grayscale")
        finite = np.isfinite(arr)
        if not finite.any():
            raise _NoPixelValues("a floating-point image whose every pixel is NaN or infinite")
        if not finite.all():
            notes.append("nonfinite_zeroed")
        peak = float(arr[finite].max())
        arr = np.where(finite, arr, 0.0) / (255.0 if peak > 1.0 else 1.0)
        return np.repeat(np.clip(arr, 0.0, 1.0)[..., None], 3, axis=2).astype(np.float32)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if mode in ("L", "1", "LA", "La"):
        notes.append("grayscale")
    elif mode in ("P", "PA"):
        notes.append("palette")
    elif mode == "CMYK":
        notes.append("cmyk")
    if has_alpha:
        notes.append("alpha")
        return _over_white(np.asarray(img.convert("RGBA")).astype(np.float32) / 255.0)
    return (np.asarray(img.convert("RGB")).astype(np.float32) / 255.0).astype(np.float32)


def array_to_float_rgb(image: np.ndarray | Image.Image, source: str) -> np.ndarray:
    """An in-memory image -> (H, W, 3) float32 RGB in [0, 1] (files go through :func:`load_image`).

    The same conversion as a file of that content gets from :func:`load_image`: a PIL image goes through its mode
    handling (16-bit and float grey scaled, palette expanded, transparency composited over white), and an array's
    alpha channel is composited over white too.

    Args:
        image: a PIL image (any mode), or an (H, W) / (H, W, 3) / (H, W, 4) array: uint8 (0..255), uint16
            (0..65535) or float in [0, 1]; grey is repeated to RGB, RGBA is composited over white.
        source: the name used in error messages.

    Raises:
        ValueError: another shape, float values outside [0, 1] or not finite, a float PIL image without a finite
            pixel (the message names ``source``).
    """
    if isinstance(image, Image.Image):
        try:
            return _to_float_rgb(image, [])
        except _NoPixelValues as exc:
            raise ValueError(f"{source}: {exc}") from exc
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"{source}: expected an (H, W, 3) RGB image, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        out = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        out = arr.astype(np.float32) / 65535.0
    else:
        out = arr.astype(np.float32)
        if not np.isfinite(out).all():
            raise ValueError(f"{source}: the image holds NaN or infinite values")
        if out.size and (out.min() < 0.0 or out.max() > 1.0):
            raise ValueError(f"{source}: float images must lie in [0, 1] (got {out.min():.3g}..{out.max():.3g})")
    if out.shape[2] == 4:
        out = _over_white(out)  # as load_image does
    return np.ascontiguousarray(out, dtype=np.float32)


def load_image(
    path: str | os.PathLike[str],
    min_side: int = MIN_SIDE,
    max_side: int = MAX_SIDE,
) -> LoadedImage:
    """Loads a photo safely as float RGB.

    Args:
        path: image file.
        min_side: reject images whose height or width is below this (pixels).
        max_side: downscale images whose height or width exceeds this (pixels) so the longer side equals it.

    Returns:
        The decoded image (see :class:`LoadedImage`).

    Raises:
        BadImageError: the file is missing, unreadable, empty, not an image, truncated, too small, a
            decompression bomb or a floating-point image without a finite pixel; ``reason`` says which.
    """
    p = Path(path)
    try:
        size = require_regular_file(p).st_size
    except FileNotFoundError as exc:
        raise BadImageError(p, REASON_MISSING, "no such file") from exc
    except IsADirectoryError as exc:
        raise BadImageError(p, REASON_UNREADABLE, "a directory, not a file") from exc
    except NotARegularFileError as exc:  # a named pipe would block the run forever, a device never end
        raise BadImageError(p, REASON_UNREADABLE, f"{exc.kind}, not a regular file") from exc
    except OSError as exc:
        raise BadImageError(p, REASON_UNREADABLE, str(exc)) from exc
    if size == 0:
        raise BadImageError(p, REASON_ZERO_BYTE, "the file is empty")
    notes: list[str] = []
    # Never accept partial decodes: a truncated file must fail loudly, not come back half grey.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and raises DecompressionBombError above twice that; big
            # photos in between are downscaled below, only the error case is rejected.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as opened:
                w_raw, h_raw = opened.size
                orientation = opened.getexif().get(0x0112, 1)  # EXIF Orientation tag
                if getattr(opened, "is_animated", False):  # animated GIF / WebP, multi-page TIFF: the first frame
                    notes.append("first_frame")
                rotated = orientation not in (1, None)
                # Upright size (orientations 5-8 swap width and height).
                w0, h0 = (h_raw, w_raw) if orientation in (5, 6, 7, 8) else (w_raw, h_raw)
                if min(w0, h0) < min_side:
                    raise BadImageError(p, REASON_TOO_SMALL, f"{w0}x{h0} px, need at least {min_side} px a side")
                factor = max_side / float(max(w0, h0))
                if factor < 1.0 and opened.format == "JPEG":
                    # Let the JPEG decoder skip detail (1/2, 1/4, 1/8 scale, never below the requested size).
                    opened.draft(opened.mode, (math.ceil(w_raw * factor), math.ceil(h_raw * factor)))
                opened.load()
                upright = ImageOps.exif_transpose(opened) if rotated else opened
                if rotated:
                    notes.append("exif_rotated")
                scale = 1.0
                if factor < 1.0:
                    new_size = (max(1, round(w0 * factor)), max(1, round(h0 * factor)))
                    log.info("%s: %dx%d px is larger than %d px; downscaled to %dx%d", p, w0, h0, max_side, *new_size)
                    notes.append("downscaled")
                    if upright.mode not in ("RGB", "RGBA", "L", "LA"):
                        upright = upright.convert("RGBA" if "A" in upright.mode else "RGB")
                    upright = upright.resize(new_size, resample=Image.Resampling.BOX)
                    scale = new_size[0] / float(w0)
                image = _to_float_rgb(upright, notes)
    except BadImageError:
        raise
    except _NoPixelValues as exc:
        raise BadImageError(p, REASON_NO_PIXEL_VALUES, str(exc)) from exc
    except PermissionError as exc:
        raise BadImageError(p, REASON_UNREADABLE, str(exc)) from exc
    except Image.DecompressionBombError as exc:
        raise BadImageError(p, REASON_TOO_LARGE, str(exc)) from exc
    except UnidentifiedImageError as exc:
        advice = unsupported_format(p)
        if advice is not None:
            raise BadImageError(p, REASON_UNSUPPORTED, advice) from exc
        raise BadImageError(p, REASON_NOT_AN_IMAGE, "Pillow cannot identify the format") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImageError(p, REASON_TRUNCATED, f"corrupt or truncated data: {exc}") from exc
    if notes:
        log.debug("%s: converted (%s)", p, ", ".join(notes))
    return LoadedImage(image=image, path=p, original_size=(h0, w0), scale=scale, notes=tuple(notes))


def image_to_tensor(image: np.ndarray) -> Tensor:
    """(H, W, 3) float RGB array -> (3, H, W) float32 tensor."""
    import torch  # lazy: labelling a folder (``msma prepare``) needs no torch, and importing it costs ~1.3 s

    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))


def unsupported_format(path: str | os.PathLike[str]) -> str | None:
    """What to tell the user of a photo in a format msma cannot read (:data:`UNREADABLE_PHOTO_EXTENSIONS`), else None."""
    suffix = Path(path).suffix
    if suffix.lower() not in UNREADABLE_PHOTO_EXTENSIONS:
        return None
    return f"msma cannot read {suffix} photos; convert to JPEG or PNG"


def list_images(
    root: str | os.PathLike[str], extensions: tuple[str, ...] = IMAGE_EXTENSIONS, unsupported: bool = False
) -> list[Path]:
    """Photos under ``root`` (recursive, sorted, hidden folders skipped) by file suffix.

    With ``unsupported=True`` the photos in formats msma cannot read (:data:`UNREADABLE_PHOTO_EXTENSIONS`) are listed
    too, so that the caller can name them as skipped (:func:`unsupported_format`) instead of passing them over.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
    """
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: not a directory of photos")
    exts = tuple(e.lower() for e in extensions + (UNREADABLE_PHOTO_EXTENSIONS if unsupported else ()))
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(exts):
                found.append(Path(dirpath) / name)
    return sorted(found)
