"""nvdiffrast CUDA backend (``RasterizeCudaContext``, no OpenGL), imported lazily.

``import msma.render`` never imports nvdiffrast; the first :class:`NvdiffrastRasterizer` builds (once, cached
under ``$MSMA_HOME/torch_extensions``) and registers nvdiffrast's CUDA plugin through
:func:`msma.render.cuda_build.load_nvdiffrast_plugin`, which works around torch 2.15's extension loader.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from msma.render.cuda_build import NvdiffrastBuildError, load_nvdiffrast_plugin


class NvdiffrastUnavailableError(RuntimeError):
    """The nvdiffrast backend cannot run here (no CUDA device, not installed, or the plugin failed to build)."""


def nvdiffrast_installed() -> bool:
    """Whether the ``nvdiffrast`` package can be imported (does not build anything)."""
    import importlib.util

    return importlib.util.find_spec("nvdiffrast") is not None


class NvdiffrastRasterizer:
    """nvdiffrast's ``rasterize`` / ``interpolate`` / ``antialias`` on a CUDA device.

    Args:
        device: the CUDA device to rasterise on (default: the current CUDA device).

    Raises:
        NvdiffrastUnavailableError: ``device`` is not CUDA, CUDA is not available, nvdiffrast is missing or its
            plugin cannot be compiled/loaded (the message says which).
    """

    name = "nvdiffrast"

    def __init__(self, device: torch.device | str | None = None) -> None:
        dev = torch.device(device if device is not None else "cuda")
        if dev.type != "cuda":
            raise NvdiffrastUnavailableError(
                f"nvdiffrast backend needs a CUDA device, got {dev}; use backend='torch' on CPU"
            )
        if not torch.cuda.is_available():
            raise NvdiffrastUnavailableError("nvdiffrast backend needs CUDA, but torch.cuda.is_available() is False")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        try:
            load_nvdiffrast_plugin()
        except NvdiffrastBuildError as exc:
            raise NvdiffrastUnavailableError(str(exc)) from exc
        import nvdiffrast.torch as dr

        self._dr: Any = dr
        self.device = dev
        self._ctx = dr.RasterizeCudaContext(device=dev)
        # Antialias topology hash, cached per triangle tensor (identity + in-place version) and device.
        self._topology_key: tuple[int, int, tuple[int, ...], int] | None = None
        self._topology_tri: Tensor | None = None
        self._topology_hash: Tensor | None = None

    def _tri(self, tri: Tensor) -> Tensor:
        if tri.ndim != 2 or tri.shape[-1] != 3:
            raise ValueError(f"nvdiffrast: tri must be (F, 3), got {tuple(tri.shape)}")
        return tri.to(device=self.device, dtype=torch.int32).contiguous()

    def rasterize(self, clip_pos: Tensor, tri: Tensor, resolution: tuple[int, int]) -> Tensor:
        """nvdiffrast ``rasterize`` (instanced mode): (B, V, 4) float32 CUDA -> rast (B, H, W, 4) float32."""
        if clip_pos.ndim != 3 or clip_pos.shape[-1] != 4:
            raise ValueError(f"nvdiffrast: clip_pos must be (B, V, 4), got {tuple(clip_pos.shape)}")
        if clip_pos.device != self.device:
            raise ValueError(f"nvdiffrast: clip_pos is on {clip_pos.device}, the context on {self.device}")
        pos = clip_pos.float().contiguous()
        rast, _ = self._dr.rasterize(self._ctx, pos, self._tri(tri), resolution=[int(r) for r in resolution])
        return rast

    def interpolate(self, attr: Tensor, rast: Tensor, tri: Tensor) -> Tensor:
        """nvdiffrast ``interpolate``: attr (B or 1, V, C) -> (B, H, W, C) float32."""
        out, _ = self._dr.interpolate(attr.float().contiguous(), rast, self._tri(tri))
        return out

    def topology_hash(self, tri: Tensor) -> Tensor:
        """``antialias_construct_topology_hash`` for ``tri``, cached while the same unmodified tensor is passed."""
        key = (id(tri), tri.data_ptr(), tuple(tri.shape), tri._version)
        if self._topology_hash is None or self._topology_key != key or self._topology_tri is not tri:
            self._topology_hash = self._dr.antialias_construct_topology_hash(self._tri(tri))
            self._topology_key = key
            self._topology_tri = tri
        return self._topology_hash

    def antialias(self, color: Tensor, rast: Tensor, clip_pos: Tensor, tri: Tensor) -> Tensor:
        """nvdiffrast's analytic silhouette antialiasing of (B, H, W, C) ``color``; gradients to colour and positions."""
        return self._dr.antialias(
            color.float().contiguous(),
            rast,
            clip_pos.float().contiguous(),
            self._tri(tri),
            topology_hash=self.topology_hash(tri),
        )
