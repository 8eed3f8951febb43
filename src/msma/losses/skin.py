"""Skin probability of each pixel of an RGB image: Deep3DFaceRecon's two-class YCbCr Gaussian mixture.

Deep3DFaceRecon_pytorch (``util/skin_mask.py``, MIT licence) computes, during its data preparation, the
posterior probability that a pixel is skin from two 4-component, full-covariance Gaussian mixtures fitted to
skin and non-skin pixels in YCbCr space (BT.601, 8-bit studio range: Y in [16, 235], Cb/Cr in [16, 240]),
with priors P(skin) = 0.8 and P(non-skin) = 0.2:

    p(skin | c) = 0.8 L_skin(c) / (0.8 L_skin(c) + 0.2 L_nonskin(c)),
    L(c) = sum_k w_k N(c; mu_k, Sigma_k).

The mixture constants below are the published ones (weights, means, det(Sigma), Sigma^-1, as Deep3D lists
them). Here the mixture is evaluated in log space (log-sum-exp), so pixels far from both mixtures get a
well-defined posterior instead of 0/0, in float32 for float32 images (error < 1e-3, below the 1/255 steps
of the uint8 masks Deep3D stores) and in float64 for float64 images. The result is used as the photometric loss's attention mask when a
batch carries no precomputed ``skin_mask``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from msma.utils.precision import full_precision

# BT.601 RGB([0, 1]) -> YCbCr (8-bit studio range), as Deep3D's ``_rgb2ycbcr`` (its matrix / 255 applied to
# 0..255 RGB equals this matrix applied to 0..1 RGB).
_RGB_TO_YCBCR = (
    (65.481, 128.553, 24.966),
    (-37.797, -74.203, 112.0),
    (112.0, -93.786, -18.214),
)
_YCBCR_OFFSET = (16.0, 128.0, 128.0)

# Deep3DFaceRecon_pytorch util/skin_mask.py: gmm_skin_* (features ordered Y, Cb, Cr).
_SKIN_W = (0.24063933, 0.16365987, 0.26034665, 0.33535415)
_SKIN_MU = (
    (113.71862, 103.39613, 164.08226),
    (150.19858, 105.18467, 155.51428),
    (183.92976, 107.62468, 152.71820),
    (114.90524, 113.59782, 151.38217),
)
_SKIN_COV_DET = (5692842.5, 5851930.5, 2329131.0, 1585971.0)
_SKIN_COV_INV = (
    ((0.0019472069, 0.0020450759, -0.00060243998), (0.0020450759, 0.017700525, 0.0051420014),
     (-0.00060243998, 0.0051420014, 0.0081308950)),
    ((0.0027110141, 0.0011036990, 0.0023122299), (0.0011036990, 0.010707724, 0.010742856),
     (0.0023122299, 0.010742856, 0.017481629)),
    ((0.0048026871, 0.00022935172, 0.0077668377), (0.00022935172, 0.011729696, 0.0081661865),
     (0.0077668377, 0.0081661865, 0.025374353)),
    ((0.0011989699, 0.0022453172, -0.0010748957), (0.0022453172, 0.047758564, 0.020332102),
     (-0.0010748957, 0.020332102, 0.024502251)),
)  # fmt: skip

# Deep3DFaceRecon_pytorch util/skin_mask.py: gmm_nonskin_*.
_NONSKIN_W = (0.12791070, 0.31130761, 0.34245777, 0.21832393)
_NONSKIN_MU = (
    (99.200851, 112.07533, 140.20602),
    (110.91392, 125.52969, 130.19237),
    (129.75864, 129.96107, 126.96808),
    (112.29587, 128.85121, 129.05431),
)
_NONSKIN_COV_DET = (458703648.0, 6466488.0, 90611376.0, 133097.63)
_NONSKIN_COV_INV = (
    ((0.00085371657, 0.00071197288, 0.00023958916), (0.00071197288, 0.0025935620, 0.00076557708),
     (0.00023958916, 0.00076557708, 0.0015042332)),
    ((0.00024650150, 0.00045542428, 0.00015019422), (0.00045542428, 0.026412144, 0.018419769),
     (0.00015019422, 0.018419769, 0.037497383)),
    ((0.00037054974, 0.00038146760, 0.00040408765), (0.00038146760, 0.0085505722, 0.0079136286),
     (0.00040408765, 0.0079136286, 0.010982352)),
    ((0.00013709733, 0.00051228428, 0.00012777430), (0.00051228428, 0.28237113, 0.10528370),
     (0.00012777430, 0.10528370, 0.23468947)),
)  # fmt: skip

#: Deep3D's prior probability of skin (``prior_skin``).
SKIN_PRIOR = 0.8


def rgb_to_ycbcr(image: Tensor) -> Tensor:
    """BT.601 studio-range YCbCr of an RGB image.

    Args:
        image: (B, 3, H, W) RGB in [0, 1].

    Returns:
        (B, 3, H, W) Y in [16, 235], Cb and Cr in [16, 240] (8-bit units, not rounded).
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"expected an RGB image batch (B, 3, H, W), got {tuple(image.shape)}")
    m = torch.tensor(_RGB_TO_YCBCR, dtype=image.dtype, device=image.device)
    off = torch.tensor(_YCBCR_OFFSET, dtype=image.dtype, device=image.device)
    return torch.einsum("ij,bjhw->bihw", m, image) + off.view(1, 3, 1, 1)


#: Reference colour the quadratic forms are expanded around (keeps the monomials small).
_CENTRE = (128.0, 128.0, 128.0)


def _quadratic_form_weights(
    means: tuple[tuple[float, ...], ...], cov_inv: tuple[tuple[tuple[float, ...], ...], ...]
) -> Tensor:
    """(10, K) weights so that ``monomials(x - c) @ W`` is each component's Mahalanobis distance.

    ``(x - mu)^T A (x - mu) = d^T A d - 2 (A m)^T d + m^T A m`` with ``d = x - c``, ``m = mu - c``; monomials
    ``(d0^2, d1^2, d2^2, d0 d1, d0 d2, d1 d2, d0, d1, d2, 1)``.
    """
    a = torch.tensor(cov_inv, dtype=torch.float64)  # (K, 3, 3)
    m = torch.tensor(means, dtype=torch.float64) - torch.tensor(_CENTRE, dtype=torch.float64)  # (K, 3)
    am = torch.einsum("kij,kj->ki", a, m)
    cols = [
        a[:, 0, 0],
        a[:, 1, 1],
        a[:, 2, 2],
        2.0 * a[:, 0, 1],
        2.0 * a[:, 0, 2],
        2.0 * a[:, 1, 2],
        -2.0 * am[:, 0],
        -2.0 * am[:, 1],
        -2.0 * am[:, 2],
        (am * m).sum(dim=1),
    ]
    return torch.stack(cols, dim=0)


def _log_norms(weights: tuple[float, ...], cov_det: tuple[float, ...]) -> Tensor:
    """(K,) ``log w_k - log((2 pi)^(3/2) sqrt(det Sigma_k))``."""
    w = torch.tensor(weights, dtype=torch.float64)
    det = torch.tensor(cov_det, dtype=torch.float64)
    return torch.log(w) - 0.5 * (3.0 * math.log(2.0 * math.pi) + torch.log(det))


_SKIN_Q = _quadratic_form_weights(_SKIN_MU, _SKIN_COV_INV)
_NONSKIN_Q = _quadratic_form_weights(_NONSKIN_MU, _NONSKIN_COV_INV)
_SKIN_LOGN = _log_norms(_SKIN_W, _SKIN_COV_DET)
_NONSKIN_LOGN = _log_norms(_NONSKIN_W, _NONSKIN_COV_DET)


@torch.no_grad()
def skin_probability(image: Tensor, prior: float = SKIN_PRIOR) -> Tensor:
    """Per-pixel posterior probability of skin (Deep3D's skin GMM); no gradient flows through it.

    Args:
        image: (B, 3, H, W) RGB in [0, 1].
        prior: prior probability of skin, in (0, 1) (Deep3D: 0.8).

    Returns:
        (B, 1, H, W) skin probability in [0, 1], same dtype and device as ``image``.
    """
    if not 0.0 < prior < 1.0:
        raise ValueError(f"skin prior must be in (0, 1), got {prior}")
    dev = image.device
    # float32 at least (half precision cannot hold the quadratic forms); autocast off so that no matmul drops
    # to bf16/fp16 inside a mixed-precision step.
    dtype = torch.promote_types(image.dtype, torch.float32)
    with full_precision(dev):
        centre = torch.tensor(_CENTRE, dtype=dtype, device=dev).view(1, 3, 1, 1)
        d = rgb_to_ycbcr(image.detach().to(dtype)) - centre  # (B, 3, H, W)
        d0, d1, d2 = d.unbind(dim=1)
        mono = torch.stack([d0 * d0, d1 * d1, d2 * d2, d0 * d1, d0 * d2, d1 * d2, d0, d1, d2, torch.ones_like(d0)], 1)
        weights = torch.cat([_SKIN_Q, _NONSKIN_Q], dim=1).to(dev, dtype)  # (10, 8): 4 skin, 4 non-skin components
        maha = torch.einsum("bmhw,mk->bkhw", mono, weights)
        log_comp = -0.5 * maha + torch.cat([_SKIN_LOGN, _NONSKIN_LOGN]).to(dev, dtype).view(1, 8, 1, 1)
        log_skin = torch.logsumexp(log_comp[:, :4], dim=1, keepdim=True)
        log_non = torch.logsumexp(log_comp[:, 4:], dim=1, keepdim=True)
        prob = torch.sigmoid(log_skin - log_non + (math.log(prior) - math.log(1.0 - prior)))  # (B, 1, H, W)
    return prob.to(image.dtype)
