"""Builds and registers nvdiffrast's CUDA plugin with ``torch.utils.cpp_extension``.

nvdiffrast 0.3.3 (``nvdiffrast/torch/ops.py``, ``_get_plugin``) JIT-compiles its plugin on first use and then calls
``importlib.import_module(plugin_name)``. torch 2.15's extension loader no longer inserts the built module into
``sys.modules``, so that import fails with ``ModuleNotFoundError`` even after a successful build. This module
builds the same sources itself (cached under ``$MSMA_HOME/torch_extensions``), then registers the loaded module
both in ``sys.modules`` under the name nvdiffrast expects and in nvdiffrast's own plugin cache, so every later
``nvdiffrast.torch`` call finds it.

Build environment (what nvdiffrast needs on a machine with PyPI's CUDA torch and a system toolkit):

* ``CUDA_HOME``: the toolkit folder holding ``bin/nvcc`` (``$CUDA_HOME``, ``$CUDA_PATH``, the folder above the
  real ``nvcc`` on ``PATH``, or ``/usr/local/cuda``).
* ``CPATH``: torch's CUDA headers include cuSPARSE / cuSOLVER / cuBLAS headers the toolkit may lack; the
  ``include/`` folders of the ``nvidia-*`` wheels in site-packages are appended.
* ``TORCH_CUDA_ARCH_LIST``: kept if set, else the visible GPU's capability, else ``9.0`` (H100/H200).

No GPU is needed to compile; one is needed to run the plugin.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch

from msma.utils.home import msma_home

log = logging.getLogger(__name__)

#: Default architecture when no GPU is visible at build time (Hopper: H100 / H200).
DEFAULT_ARCH = "9.0"

# The source list of nvdiffrast 0.3.3's CUDA (non-GL) plugin, relative to ``nvdiffrast/torch``
# (``nvdiffrast/torch/ops.py``, ``_get_plugin(gl=False)``).
_SOURCES = (
    "../common/cudaraster/impl/Buffer.cpp",
    "../common/cudaraster/impl/CudaRaster.cpp",
    "../common/cudaraster/impl/RasterImpl.cu",
    "../common/cudaraster/impl/RasterImpl.cpp",
    "../common/common.cpp",
    "../common/rasterize.cu",
    "../common/interpolate.cu",
    "../common/texture.cu",
    "../common/texture.cpp",
    "../common/antialias.cu",
    "torch_bindings.cpp",
    "torch_rasterize.cpp",
    "torch_interpolate.cpp",
    "torch_texture.cpp",
    "torch_antialias.cpp",
)

_lock = threading.Lock()
_plugin: ModuleType | None = None


class NvdiffrastBuildError(RuntimeError):
    """The nvdiffrast CUDA plugin could not be found, compiled or loaded."""


def plugin_name() -> str:
    """The module name nvdiffrast imports its CUDA plugin under (depends on nvdiffrast and torch versions)."""
    import nvdiffrast

    name = f"nvdiffrast_plugin_{nvdiffrast.__version__}_torch{torch.__version__}"
    return re.sub(r"\W|^(?=\d)", "_", name)


def build_directory() -> Path:
    """Where the plugin is compiled and cached: ``$MSMA_HOME/torch_extensions/<plugin_name>``."""
    return msma_home() / "torch_extensions" / plugin_name()


def find_cuda_home() -> Path:
    """Locates the CUDA toolkit folder (the one whose ``bin/nvcc`` compiles the plugin).

    Raises:
        NvdiffrastBuildError: no toolkit with ``bin/nvcc`` was found.
    """
    candidates: list[Path] = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]))
    nvcc = shutil.which("nvcc")
    if nvcc:
        # /usr/local/bin/nvcc may be a wrapper script; resolve symlinks and look for a real toolkit layout.
        real = Path(nvcc).resolve()
        candidates.append(real.parent.parent)
        try:
            text = real.read_text(errors="ignore") if real.stat().st_size < 4096 else ""
        except OSError:
            text = ""
        for match in re.findall(r"(/\S+)/bin/nvcc", text):
            candidates.append(Path(match))
    candidates += sorted(Path("/usr/local").glob("cuda*"), reverse=True)
    for cand in candidates:
        if (cand / "bin" / "nvcc").is_file() and (cand / "include" / "cuda_runtime.h").is_file():
            return cand
    raise NvdiffrastBuildError(
        "nvdiffrast: no CUDA toolkit found (looked at $CUDA_HOME, $CUDA_PATH, nvcc on PATH, /usr/local/cuda*); "
        "install the CUDA toolkit matching torch's major CUDA version or set CUDA_HOME"
    )


def _wheel_include_dirs() -> list[str]:
    """``include/`` folders of the ``nvidia-*`` pip wheels (cuSPARSE, cuSOLVER, cuBLAS headers)."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    dirs: list[str] = []
    for root in spec.submodule_search_locations:
        for inc in sorted(Path(root).glob("*/include")):
            dirs.append(str(inc))
    return dirs


def build_environment() -> dict[str, str]:
    """The environment variables the build needs (``CUDA_HOME``, ``CPATH``, ``TORCH_CUDA_ARCH_LIST``)."""
    env: dict[str, str] = {"CUDA_HOME": str(find_cuda_home())}
    includes = _wheel_include_dirs()
    old = os.environ.get("CPATH", "")
    parts = [p for p in old.split(os.pathsep) if p]
    parts += [d for d in includes if d not in parts]
    env["CPATH"] = os.pathsep.join(parts)
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        env["TORCH_CUDA_ARCH_LIST"] = os.environ["TORCH_CUDA_ARCH_LIST"]
    elif torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        env["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    else:
        env["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH
    return env


def load_nvdiffrast_plugin(verbose: bool = False) -> ModuleType:
    """Compiles (once, cached) and loads nvdiffrast's CUDA plugin and registers it where nvdiffrast looks.

    Safe to call repeatedly and from several threads; the second call returns the loaded module.

    Args:
        verbose: print the compiler's output.

    Returns:
        The loaded plugin module (``rasterize_fwd_cuda``, ``interpolate_fwd``, ``antialias_fwd`` ...).

    Raises:
        NvdiffrastBuildError: nvdiffrast is not installed, torch has no CUDA build, no toolkit was found, or the
            compilation failed (the message carries the compiler's error).
    """
    global _plugin
    with _lock:
        if _plugin is not None:
            return _plugin
        try:
            import nvdiffrast
            import nvdiffrast.torch.ops as nvops
        except ImportError as exc:
            raise NvdiffrastBuildError(
                "nvdiffrast is not installed: pip install 'diffrp-nvdiffrast==0.3.3.1' (extra 'msma[cuda]')"
            ) from exc
        if torch.version.cuda is None:
            raise NvdiffrastBuildError(
                f"nvdiffrast needs a CUDA build of torch; this torch ({torch.__version__}) has no CUDA support"
            )
        name = plugin_name()
        src_root = Path(nvdiffrast.__file__).parent / "torch"
        sources = [str((src_root / s).resolve()) for s in _SOURCES]
        missing = [s for s in sources if not Path(s).is_file()]
        if missing:
            raise NvdiffrastBuildError(f"nvdiffrast installation at {src_root.parent} lacks sources: {missing}")
        build_dir = build_directory()
        build_dir.mkdir(parents=True, exist_ok=True)
        env = build_environment()
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        # cpp_extension reads CUDA_HOME at import time; keep its cached value in step with ours.
        import torch.utils.cpp_extension as cpp_ext

        saved_cuda_home = cpp_ext.CUDA_HOME
        cpp_ext.CUDA_HOME = env["CUDA_HOME"]
        try:
            module = cpp_ext.load(
                name=name,
                sources=sources,
                extra_cflags=["-DNVDR_TORCH"],
                extra_cuda_cflags=["-DNVDR_TORCH", "-lineinfo"],
                build_directory=str(build_dir),
                with_cuda=True,
                verbose=verbose,
            )
        except Exception as exc:  # compiler / linker / loader errors come in several types
            raise NvdiffrastBuildError(
                f"nvdiffrast: compiling the CUDA plugin in {build_dir} failed "
                f"(CUDA_HOME={env['CUDA_HOME']}, TORCH_CUDA_ARCH_LIST={env['TORCH_CUDA_ARCH_LIST']}): {exc}"
            ) from exc
        finally:
            cpp_ext.CUDA_HOME = saved_cuda_home
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        if not isinstance(module, ModuleType):
            raise NvdiffrastBuildError(f"nvdiffrast: cpp_extension.load returned {type(module)!r}, not a module")
        # What nvdiffrast's _get_plugin would import, and its own cache so it never tries to build again.
        sys.modules[name] = module
        nvops._cached_plugin[False] = module
        _plugin = module
        log.info("nvdiffrast plugin %s loaded from %s", name, build_dir)
        return module
