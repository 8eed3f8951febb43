"""Loss weights as a plain dataclass (also the Hydra structured-config schema of the ``loss`` group).

Defaults are the weights of MSMA's public code (which keeps Deep3DFaceRecon's terms and changes the weights);
:func:`deep3d_loss_config` gives Deep3DFaceRecon_pytorch's own defaults (``models/facerecon_model.py``,
``modify_commandline_options``: w_feat 0.2, w_color 1.92, w_reg 3e-4, w_id 1.0, w_exp 0.8, w_tex 1.7e-2,
w_gamma 10, w_lm 1.6e-3, w_reflc 5).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

#: iresnet depths :mod:`msma.losses.identity` implements.
IRESNET_ARCHS: tuple[str, ...] = ("r18", "r34", "r50", "r100", "r200")


@dataclass
class LossConfig:
    """Weights and switches of :class:`msma.losses.total.FaceReconLoss`.

    Attributes:
        w_feat: identity (face-recognition embedding) loss weight; used only when ``use_identity``.
        w_color: photometric loss weight.
        w_reg: coefficient-regularisation weight (multiplies ``w_id |id|^2 + w_exp |exp|^2 + w_tex |tex|^2``).
        w_id: identity-coefficient weight inside the regulariser.
        w_exp: expression-coefficient weight inside the regulariser.
        w_tex: albedo-coefficient weight inside the regulariser.
        w_gamma: SH lighting colour-variance (monochromatic light) weight.
        w_lm: 68-landmark loss weight.
        w_dense: dense-landmark loss weight (MediaPipe's 468 points of photo sources labelled with ``mediapipe``,
            :mod:`msma.losses.dense`; rows with ``dense_valid`` only). 0 (off) by default: it needs MediaPipe's
            ``face_landmarker.task`` for the correspondence, and it is not part of Deep3D/MSMA.
        w_reflc: albedo-variance-on-skin (reflectance) weight.
        w_param: ground-truth coefficient supervision weight (rows with ``params_valid`` only). Not part of
            Deep3D/MSMA's public code; 1.0 is our choice: the supervision term is a per-coefficient *mean*
            squared error per group, so an error of 0.5 standard deviations on every id/exp/tex coefficient
            costs 3 x 0.25 = 0.75, the order of the weighted landmark term at a few pixels of error.
        param_w_id: weight of the ``id`` group inside the supervision term.
        param_w_exp: weight of the ``exp`` group inside the supervision term.
        param_w_tex: weight of the ``tex`` group inside the supervision term.
        param_w_angles: weight of the ``angles`` group (radians); 0 by default because geometric augmentation
            (rotation, flip) changes the pose without updating the ground truth.
        param_w_sh: weight of the ``sh`` group; 0 by default (photometric augmentation changes the light).
        param_w_trans: weight of the ``trans`` group (mm); 0 by default (shift/scale augmentation).
        use_identity: enable the identity loss (needs ``identity_weights``).
        identity_weights: path of an insightface ``arcface_torch`` ``backbone.pth`` state dict.
        identity_arch: iresnet depth of those weights: ``"r18"``, ``"r34"``, ``"r50"``, ``"r100"`` or ``"r200"``.
        skin_from_image: when the batch carries no ``skin_mask``, compute Deep3D's skin-GMM probability from the
            input image (True) or use a mask of ones (False).
    """

    w_feat: float = 0.35
    w_color: float = 1.5
    w_reg: float = 5e-4
    w_id: float = 1.3
    w_exp: float = 1.1
    w_tex: float = 0.06
    w_gamma: float = 5.0
    w_lm: float = 0.01
    w_dense: float = 0.0
    w_reflc: float = 3.0
    w_param: float = 1.0
    param_w_id: float = 1.0
    param_w_exp: float = 1.0
    param_w_tex: float = 1.0
    param_w_angles: float = 0.0
    param_w_sh: float = 0.0
    param_w_trans: float = 0.0
    use_identity: bool = False
    identity_weights: str | None = None
    identity_arch: str = "r50"
    skin_from_image: bool = True

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.startswith(("w_", "param_w_")) and not value >= 0.0:
                raise ValueError(f"LossConfig.{f.name} must be a finite weight >= 0, got {value!r}")
        if self.identity_arch not in IRESNET_ARCHS:
            raise ValueError(f"LossConfig.identity_arch must be one of {IRESNET_ARCHS}, got {self.identity_arch!r}")

    def param_group_weights(self) -> dict[str, float]:
        """Per-group weights of the supervision term, keyed by :data:`msma.face_model.params.GROUPS` names."""
        return {
            "id": self.param_w_id,
            "exp": self.param_w_exp,
            "tex": self.param_w_tex,
            "angles": self.param_w_angles,
            "sh": self.param_w_sh,
            "trans": self.param_w_trans,
        }


def loss_preset(name: str, **overrides: object) -> LossConfig:
    """The named preset with optional overrides, read from its Hydra group file ``experiments/loss/<name>.yaml``
    (the one home of the published weights: ``msma`` = MSMA's public code, ``deep3d`` = Deep3DFaceRecon's).

    Raises:
        ValueError: an unknown preset (the known ones are named) or an invalid override.
    """
    from omegaconf import OmegaConf

    from msma.config import experiments_dir

    folder = experiments_dir() / "loss"
    path = folder / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown loss preset {name!r}; known: {sorted(p.stem for p in folder.glob('*.yaml'))}")
    merged = OmegaConf.merge(OmegaConf.structured(LossConfig), OmegaConf.load(path), dict(overrides))
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, LossConfig)
    return cfg


def msma_loss_config(**overrides: object) -> LossConfig:
    """MSMA public-code weights (``experiments/loss/msma.yaml``), with optional overrides."""
    return loss_preset("msma", **overrides)


def deep3d_loss_config(**overrides: object) -> LossConfig:
    """Deep3DFaceRecon_pytorch's default weights (``experiments/loss/deep3d.yaml``), with optional overrides."""
    return loss_preset("deep3d", **overrides)
