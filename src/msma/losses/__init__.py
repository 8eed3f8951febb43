"""Loss terms of the face-reconstruction objective (Deep3DFaceRecon's, with MSMA's weights) and their combiner."""

from msma.losses.config import LossConfig, deep3d_loss_config, loss_preset, msma_loss_config
from msma.losses.dense import DenseLandmarkLoss
from msma.losses.identity import IdentityLoss, IResNet, build_iresnet, load_iresnet
from msma.losses.landmark import LandmarkLoss, deep3d_landmark_weights, landmark_loss
from msma.losses.photometric import PhotometricLoss, photometric_loss
from msma.losses.regularization import (
    CoefficientRegularization,
    GammaLoss,
    ReflectanceLoss,
    coefficient_regularization,
    gamma_loss,
    reflectance_loss,
)
from msma.losses.skin import skin_probability
from msma.losses.supervision import ParamSupervisionLoss, param_supervision_loss
from msma.losses.total import FaceReconLoss, LossOutput, is_finite

__all__ = [
    "CoefficientRegularization",
    "DenseLandmarkLoss",
    "FaceReconLoss",
    "GammaLoss",
    "IResNet",
    "IdentityLoss",
    "LandmarkLoss",
    "LossConfig",
    "LossOutput",
    "ParamSupervisionLoss",
    "PhotometricLoss",
    "ReflectanceLoss",
    "build_iresnet",
    "coefficient_regularization",
    "deep3d_landmark_weights",
    "deep3d_loss_config",
    "gamma_loss",
    "is_finite",
    "landmark_loss",
    "load_iresnet",
    "loss_preset",
    "msma_loss_config",
    "param_supervision_loss",
    "photometric_loss",
    "reflectance_loss",
    "skin_probability",
]
