"""msma: single-image 3D face reconstruction (MSMA, MLANet, Deep3DFaceRecon) as a Lightning experiment package."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "Reconstructor", "Reconstruction"]

if TYPE_CHECKING:  # pragma: no cover
    from msma.inference import Reconstruction, Reconstructor


def __getattr__(name: str) -> Any:
    # Lazy so that `import msma` stays cheap (no torch/timm import until needed).
    if name in ("Reconstructor", "Reconstruction"):
        from msma import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'msma' has no attribute {name!r}")
