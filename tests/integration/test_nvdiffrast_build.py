"""The nvdiffrast CUDA plugin compiles and imports here (no GPU needed; the build is cached in $MSMA_HOME)."""

from __future__ import annotations

import os
import shutil
import sys

import pytest
import torch

from msma.render.nvdiffrast_raster import nvdiffrast_installed

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not nvdiffrast_installed(), reason="nvdiffrast not installed (extra msma[cuda])"),
    pytest.mark.skipif(torch.version.cuda is None, reason="torch has no CUDA build"),
    pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH"),
]


@pytest.mark.timeout(3600)
def test_plugin_compiles_imports_and_is_registered() -> None:
    import nvdiffrast.torch.ops as nvops

    from msma.render.cuda_build import build_directory, load_nvdiffrast_plugin, plugin_name

    module = load_nvdiffrast_plugin()
    name = plugin_name()
    # The module nvdiffrast imports by name, and its own cache, both hold the plugin we built.
    assert sys.modules[name] is module
    assert nvops._get_plugin(gl=False) is module
    for fn in ("rasterize_fwd_cuda", "rasterize_grad", "interpolate_fwd", "interpolate_grad", "antialias_fwd"):
        assert callable(getattr(module, fn)), fn
    assert (build_directory() / f"{name}.so").is_file()
    assert load_nvdiffrast_plugin() is module  # cached


def test_build_environment_points_at_a_toolkit() -> None:
    from msma.render.cuda_build import build_environment

    env = build_environment()
    assert os.path.isfile(os.path.join(env["CUDA_HOME"], "bin", "nvcc"))
    assert env["TORCH_CUDA_ARCH_LIST"]
