"""``MeshRenderer``: from posed face geometry and colours to an image, coverage mask, depth and normals."""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import Tensor, nn

from msma.face_model.output import FaceOutput
from msma.render.base import Rasterizer, RenderOutput
from msma.render.nvdiffrast_raster import NvdiffrastRasterizer, NvdiffrastUnavailableError
from msma.render.torch_raster import TorchRasterizer

log = logging.getLogger(__name__)

BackendName = Literal["torch", "nvdiffrast", "auto"]
BACKENDS: tuple[str, ...] = ("torch", "nvdiffrast", "auto")


def get_rasterizer(name: str = "auto", device: torch.device | str = "cpu") -> Rasterizer:
    """Returns a rasteriser backend for ``device``.

    Args:
        name: ``"torch"`` (pure PyTorch, any device), ``"nvdiffrast"`` (CUDA only) or ``"auto"`` (nvdiffrast on a
            CUDA device when it builds and loads, otherwise torch, with a logged warning on CUDA).
        device: the device the clip-space positions will live on.

    Returns:
        An object implementing :class:`msma.render.base.Rasterizer`.

    Raises:
        ValueError: unknown ``name``.
        NvdiffrastUnavailableError: ``name == "nvdiffrast"`` and it cannot run on ``device``.
    """
    dev = torch.device(device)
    if name == "torch":
        return TorchRasterizer()
    if name == "nvdiffrast":
        return NvdiffrastRasterizer(dev)
    if name == "auto":
        if dev.type != "cuda":
            return TorchRasterizer()
        try:
            return NvdiffrastRasterizer(dev)
        except NvdiffrastUnavailableError as exc:
            log.warning("renderer=auto: nvdiffrast unavailable on %s (%s); using the torch backend", dev, exc)
            return TorchRasterizer()
    raise ValueError(f"unknown renderer backend {name!r}; expected one of {BACKENDS}")


def _resolution(resolution: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(resolution, int):
        return (resolution, resolution)
    if len(resolution) != 2:
        raise ValueError(f"resolution must be an int or (H, W), got {resolution}")
    return (int(resolution[0]), int(resolution[1]))


class MeshRenderer(nn.Module):
    """Differentiable mesh renderer over a rasteriser backend (nvdiffrast semantics, row 0 = top of the image).

    The backend is resolved per device on first use (so one module serves CPU and GPU). No parameters.

    Args:
        backend: ``"torch"``, ``"nvdiffrast"`` or ``"auto"`` (see :func:`get_rasterizer`).
        antialias: apply the backend's analytic silhouette antialiasing (nvdiffrast's method in both backends) to the
            image and the mask, which then has fractional values on the outline.
    """

    def __init__(self, backend: str = "auto", antialias: bool = True) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"MeshRenderer: unknown backend {backend!r}; expected one of {BACKENDS}")
        self.backend = backend
        self.antialias = bool(antialias)
        self._rasterizers: dict[str, Rasterizer] = {}
        # The last triangle tensor converted to int32 on the render device (so backends that cache per triangle
        # tensor, e.g. nvdiffrast's antialias topology hash, see the same tensor every call).
        self._tri_src: Tensor | None = None
        self._tri_key: tuple[int, int, str] | None = None
        self._tri_dev: Tensor | None = None

    def rasterizer(self, device: torch.device | str) -> Rasterizer:
        """The (cached) rasteriser used for tensors on ``device``."""
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        key = str(dev)
        if key not in self._rasterizers:
            self._rasterizers[key] = get_rasterizer(self.backend, dev)
        return self._rasterizers[key]

    def _device_tri(self, tri: Tensor, device: torch.device) -> Tensor:
        """``tri`` as contiguous int32 on ``device``, cached while the same unmodified tensor is passed."""
        if tri.device == device and tri.dtype == torch.int32 and tri.is_contiguous():
            return tri
        key = (id(tri), tri._version, str(device))
        if self._tri_dev is None or self._tri_src is not tri or self._tri_key != key:
            self._tri_dev = tri.to(device=device, dtype=torch.int32).contiguous()
            self._tri_src, self._tri_key = tri, key
        return self._tri_dev

    def render(self, face: FaceOutput, tri: Tensor) -> RenderOutput:
        """Renders a batch of posed, shaded faces at ``face.image_size``.

        Args:
            face: model output; uses ``clip`` (B, N, 4) for rasterisation, ``color`` (B, N, 3) for the image,
                ``normals`` (B, N, 3) and the depth ``clip.w`` (= camera distance - z, mm).
            tri: (F, 3) triangle vertex indices (int32 or int64).

        Returns:
            :class:`RenderOutput` at (face.image_size, face.image_size).
        """
        return self.forward(face.clip, tri, face.color, face.normals, resolution=face.image_size)

    def forward(
        self,
        clip: Tensor,
        tri: Tensor,
        colors: Tensor,
        normals: Tensor | None = None,
        resolution: int | tuple[int, int] = 224,
        depth: Tensor | None = None,
    ) -> RenderOutput:
        """Rasterises and shades a mesh batch.

        Args:
            clip: (B, V, 4) clip-space positions (nvdiffrast convention, see :mod:`msma.render.base`).
            tri: (F, 3) triangle vertex indices.
            colors: (B, V, 3) or (1, V, 3) per-vertex RGB (linear).
            normals: (B, V, 3) per-vertex normals (model frame); the output is renormalised per pixel. ``None``
                gives zero normals.
            resolution: output size, an int for square images or (H, W).
            depth: (B, V) per-vertex depth in mm; default ``clip[..., 3]`` (distance along the view axis for
                :class:`~msma.face_model.camera.PerspectiveCamera`).

        Returns:
            :class:`RenderOutput`: image (B, 3, H, W), mask (B, 1, H, W) in [0, 1], depth (B, 1, H, W) mm,
            normals (B, 3, H, W) unit, rast (B, H, W, 4). Empty pixels are zero in every output.
        """
        if clip.ndim != 3 or clip.shape[-1] != 4:
            raise ValueError(f"MeshRenderer: clip must be (B, V, 4), got {tuple(clip.shape)}")
        if colors.ndim != 3 or colors.shape[1] != clip.shape[1]:
            raise ValueError(
                f"MeshRenderer: colors must be (B, V, C) with V={clip.shape[1]}, got {tuple(colors.shape)}"
            )
        batch, n_vert = clip.shape[0], clip.shape[1]
        if normals is not None and normals.shape[-2:] != (n_vert, 3):
            raise ValueError(f"MeshRenderer: normals must be (B, {n_vert}, 3), got {tuple(normals.shape)}")
        hw = _resolution(resolution)
        ras = self.rasterizer(clip.device)
        if tri.ndim != 2 or tri.shape[-1] != 3:
            raise ValueError(f"MeshRenderer: tri must be (F, 3), got {tuple(tri.shape)}")
        tri = self._device_tri(tri, clip.device)
        rast = ras.rasterize(clip, tri, hw)
        covered = (rast[..., 3:4] > 0).to(rast.dtype)  # (B, H, W, 1)

        depth_v = clip[..., 3] if depth is None else depth
        if depth_v.shape != (batch, n_vert):
            raise ValueError(f"MeshRenderer: depth must be (B, V) = ({batch}, {n_vert}), got {tuple(depth_v.shape)}")
        n_color = colors.shape[-1]
        if colors.shape[0] != batch:
            colors = colors.expand(batch, -1, -1)
        parts = [colors, depth_v[..., None]]
        if normals is not None:
            if normals.shape[0] != batch:
                normals = normals.expand(batch, -1, -1)
            parts.append(normals)
        dtype = clip.dtype
        attrs = torch.cat([p.to(dtype) for p in parts], dim=-1)
        feats = ras.interpolate(attrs, rast, tri)  # (B, H, W, C+1[+3])
        # split (not slicing): its backward is one concatenation instead of a zero-filled image per slice.
        pieces = feats.split([n_color, 1, 3] if normals is not None else [n_color, 1], dim=-1)
        color_px, depth_px = pieces[0], pieces[1]
        if normals is not None:
            nrm = pieces[2]
            nrm = nrm / nrm.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # empty pixels stay 0
        else:
            nrm = torch.zeros_like(feats[..., :3])

        if self.antialias:
            aa = ras.antialias(torch.cat([color_px, covered.to(color_px.dtype)], dim=-1), rast, clip, tri)
            color_px, mask = aa[..., :n_color], aa[..., n_color:]
        else:
            mask = covered.to(color_px.dtype)

        # (B, H, W, C) -> (B, C, H, W) views (channels-last memory layout; no copy).
        return RenderOutput(
            image=color_px.permute(0, 3, 1, 2),
            mask=mask.permute(0, 3, 1, 2),
            depth=depth_px.permute(0, 3, 1, 2),
            normals=nrm.permute(0, 3, 1, 2),
            rast=rast,
        )
