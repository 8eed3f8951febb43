"""Coefficient, lighting and albedo regularisers (Deep3DFaceRecon_pytorch ``models/losses.py``: ``reg_loss``
returns the coefficient and gamma terms, ``reflectance_loss`` the albedo-variance term).
"""

from __future__ import annotations

from torch import Tensor, nn

from msma.face_model.params import FaceParams


def coefficient_regularization(params: FaceParams, w_id: float, w_exp: float, w_tex: float) -> Tensor:
    """``(w_id ||id||^2 + w_exp ||exp||^2 + w_tex ||tex||^2)`` summed per sample, averaged over the batch.

    Args:
        params: predicted coefficients (B rows).
        w_id: weight of the identity coefficients.
        w_exp: weight of the expression coefficients.
        w_tex: weight of the albedo coefficients.

    Returns:
        Scalar loss (coefficient units squared).
    """
    total = w_id * (params.id**2).sum() + w_exp * (params.exp**2).sum() + w_tex * (params.tex**2).sum()
    return total / params.batch_size


def gamma_loss(sh: Tensor) -> Tensor:
    """Colour variance of the SH lighting: mean over (B, 9 bands) of the variance across the 3 channels.

    ``mean_{b,c,k} (gamma_bck - mean_c gamma_bck)^2`` with ``gamma = sh.view(B, 3, 9)`` (channel-major, as
    :class:`FaceParams`); zero for monochromatic light. The DC offset (+0.8 on every channel) cancels.

    Args:
        sh: (B, 27) SH coefficients, channel-major.

    Returns:
        Scalar loss.
    """
    if sh.ndim != 2 or sh.shape[1] != 27:
        raise ValueError(f"SH coefficients must be (B, 27), got {tuple(sh.shape)}")
    gamma = sh.reshape(-1, 3, 9)
    return ((gamma - gamma.mean(dim=1, keepdim=True)) ** 2).mean()


def reflectance_loss(albedo: Tensor, skin_vertex_mask: Tensor) -> Tensor:
    """Albedo variance over the face model's skin region (uniform skin albedo prior).

    ``sum_{b,n,c} m_n (a_bnc - abar_bc)^2 / (B sum_n m_n)`` where ``abar_b`` is the ``m``-weighted mean albedo
    of sample ``b``. For a 0/1 mask this equals Deep3D's ``reflectance_loss``.

    Args:
        albedo: (B, N, 3) per-vertex albedo in [0, 1].
        skin_vertex_mask: (N,) per-vertex skin weight in [0, 1] (``FaceModel.skin_mask``).

    Returns:
        Scalar loss.
    """
    if albedo.ndim != 3 or albedo.shape[-1] != 3:
        raise ValueError(f"albedo must be (B, N, 3), got {tuple(albedo.shape)}")
    if skin_vertex_mask.shape != (albedo.shape[1],):
        raise ValueError(
            f"skin vertex mask must be ({albedo.shape[1]},) for this albedo, got {tuple(skin_vertex_mask.shape)}"
        )
    m = skin_vertex_mask.to(albedo.dtype).reshape(1, -1, 1)
    m_sum = m.sum()
    if not bool(m_sum > 0):
        raise ValueError("skin vertex mask is empty (sum 0): the reflectance loss needs skin vertices")
    mean = (m * albedo).sum(dim=1, keepdim=True) / m_sum
    return (m * (albedo - mean) ** 2).sum() / (albedo.shape[0] * m_sum)


class CoefficientRegularization(nn.Module):
    """:func:`coefficient_regularization` with fixed group weights.

    Args:
        w_id: identity weight (Deep3D 1.0, MSMA 1.3).
        w_exp: expression weight (Deep3D 0.8, MSMA 1.1).
        w_tex: albedo weight (Deep3D 1.7e-2, MSMA 0.06).
    """

    def __init__(self, w_id: float = 1.3, w_exp: float = 1.1, w_tex: float = 0.06) -> None:
        super().__init__()
        self.w_id, self.w_exp, self.w_tex = w_id, w_exp, w_tex

    def forward(self, params: FaceParams) -> Tensor:
        """FaceParams (B rows) -> scalar."""
        return coefficient_regularization(params, self.w_id, self.w_exp, self.w_tex)


class GammaLoss(nn.Module):
    """:func:`gamma_loss` as a module: (B, 27) SH -> scalar."""

    def forward(self, sh: Tensor) -> Tensor:
        return gamma_loss(sh)


class ReflectanceLoss(nn.Module):
    """:func:`reflectance_loss` as a module: (B, N, 3) albedo, (N,) skin weights -> scalar."""

    def forward(self, albedo: Tensor, skin_vertex_mask: Tensor) -> Tensor:
        return reflectance_loss(albedo, skin_vertex_mask)
