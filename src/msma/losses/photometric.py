"""Photometric loss: masked mean per-pixel colour distance (Deep3DFaceRecon_pytorch ``models/losses.py``,
``photo_loss``; mask as in ``models/facerecon_model.py`` ``compute_losses``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: Deep3D's epsilon inside the square root (keeps the gradient finite where the colours agree).
PHOTO_EPS = 1e-6


def photometric_loss(image: Tensor, rendered: Tensor, mask: Tensor, eps: float = PHOTO_EPS) -> Tensor:
    """Masked mean of the per-pixel L2 colour distance.

    ``sum_p m_p sqrt(eps + ||I_p - R_p||^2) / max(sum_p m_p, 1)`` over every pixel of the batch (Deep3D
    normalises by the mask sum of the whole batch, so samples with larger face regions weigh more).

    Args:
        image: (B, 3, H, W) input RGB in [0, 1].
        rendered: (B, 3, H, W) rendered RGB in [0, 1].
        mask: (B, 1, H, W) non-negative per-pixel weight (skin probability x rendered face coverage).
        eps: added under the square root.

    Returns:
        Scalar loss (RGB units, [0, sqrt(3)]).
    """
    if image.shape != rendered.shape or image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(
            f"photometric loss: image {tuple(image.shape)} and render {tuple(rendered.shape)} must both be (B, 3, H, W)"
        )
    if mask.shape != (image.shape[0], 1, *image.shape[2:]):
        raise ValueError(
            f"photometric loss: mask must be (B, 1, H, W) = {(image.shape[0], 1, *image.shape[2:])}, got {tuple(mask.shape)}"
        )
    dist = torch.sqrt(eps + ((image - rendered) ** 2).sum(dim=1, keepdim=True))
    return (dist * mask).sum() / mask.sum().clamp_min(1.0)


class PhotometricLoss(nn.Module):
    """:func:`photometric_loss` with mask = skin probability x rendered face coverage.

    The coverage mask is detached, as in Deep3D (the loss does not move the silhouette to shrink the mask).

    Args:
        eps: added under the square root.
    """

    def __init__(self, eps: float = PHOTO_EPS) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, image: Tensor, rendered: Tensor, render_mask: Tensor, skin_mask: Tensor | None = None) -> Tensor:
        """Computes the loss.

        Args:
            image: (B, 3, H, W) input RGB in [0, 1].
            rendered: (B, 3, H, W) rendered RGB in [0, 1].
            render_mask: (B, 1, H, W) rendered coverage in [0, 1] (:attr:`RenderOutput.mask`).
            skin_mask: (B, 1, H, W) skin probability in [0, 1], or None for all ones.

        Returns:
            Scalar loss.
        """
        mask = render_mask.detach()
        if skin_mask is not None:
            if skin_mask.shape != render_mask.shape:
                raise ValueError(
                    f"skin mask {tuple(skin_mask.shape)} must match the render mask {tuple(render_mask.shape)}"
                )
            mask = mask * skin_mask.detach().to(mask.dtype)
        return photometric_loss(image, rendered, mask, self.eps)
