"""Encoders: image (B, 3, H, W) in [0, 1] -> FaceParams.

``build_encoder(name, layout, backbone="resnet50", pretrained=False, ...)`` with names ``msma_lka`` (MSMA),
``mlanet`` (MLANet) and ``deep3d_r50`` (Deep3DFaceRecon baseline); ``EncoderConfig`` /
``build_encoder_from_config`` for Hydra.
"""

from msma.models.backbone import FeatureBackbone, PretrainedWeightsError, create_backbone
from msma.models.config import EncoderConfig, build_encoder_from_config
from msma.models.deep3d import Deep3DEncoder
from msma.models.encoder import FaceEncoder, MSMAEncoder
from msma.models.heads import TRANS_UNIT_MM, AttributeHeads, HeadInputs, HeadWidths
from msma.models.lka import LKA, MLKA, LKABlock, LKAChain
from msma.models.mlanet import CoordinateAttention, MLANetEncoder
from msma.models.registry import available_encoders, build_encoder

__all__ = [
    "AttributeHeads",
    "CoordinateAttention",
    "Deep3DEncoder",
    "EncoderConfig",
    "FaceEncoder",
    "FeatureBackbone",
    "HeadInputs",
    "HeadWidths",
    "LKA",
    "LKABlock",
    "LKAChain",
    "MLANetEncoder",
    "MLKA",
    "MSMAEncoder",
    "PretrainedWeightsError",
    "TRANS_UNIT_MM",
    "available_encoders",
    "build_encoder",
    "build_encoder_from_config",
    "create_backbone",
]
