"""Differentiable rendering: rasteriser backends with nvdiffrast semantics and the mesh renderer.

``torch`` backend: pure PyTorch (CPU or any device). ``nvdiffrast`` backend: CUDA, imported lazily.
"""

from msma.render.base import Rasterizer, RenderOutput
from msma.render.renderer import BACKENDS, MeshRenderer, get_rasterizer
from msma.render.torch_raster import TorchRasterizer

__all__ = ["BACKENDS", "MeshRenderer", "Rasterizer", "RenderOutput", "TorchRasterizer", "get_rasterizer"]
