"""Encoders: image (B, 3, H, W) in [0, 1] -> FaceParams.

``build_encoder(name, layout, backbone="resnet50", pretrained=False, ...)`` with names ``msma_lka`` (MSMA),
``mlanet`` (MLANet) and ``deep3d_r50`` (Deep3DFaceRecon baseline), the authors' networks, and msma's own
variants ``msma_spatial`` and ``mlanet_timm``; ``EncoderConfig`` / ``build_encoder_from_config`` for Hydra;
:mod:`msma.models.convert` maps the authors' checkpoints to these modules.
"""

from msma.models.backbone import FeatureBackbone, PretrainedWeightsError, create_backbone
from msma.models.config import EncoderConfig, build_encoder_from_config
from msma.models.deep3d import Deep3DEncoder
from msma.models.encoder import FaceEncoder, MSMASpatialEncoder
from msma.models.heads import TRANS_UNIT_MM, AttributeHeads, HeadInputs, HeadWidths
from msma.models.lka import LKA, MLKA, LKABlock, LKAChain
from msma.models.mlanet import CoordAtt, CoordinateAttention, MLANet, MLANetTimmEncoder
from msma.models.msma import MSMANet
from msma.models.registry import PAPER_ENCODERS, available_encoders, build_encoder
from msma.models.resnet import ResNet

__all__ = [
    "AttributeHeads",
    "CoordAtt",
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
    "MLANet",
    "MLANetTimmEncoder",
    "MLKA",
    "MSMANet",
    "MSMASpatialEncoder",
    "PAPER_ENCODERS",
    "ResNet",
    "PretrainedWeightsError",
    "TRANS_UNIT_MM",
    "available_encoders",
    "build_encoder",
    "build_encoder_from_config",
    "create_backbone",
]
