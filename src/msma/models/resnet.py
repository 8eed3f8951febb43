"""ResNet in torchvision's module layout, the backbone of the authors' networks (MSMA, MLANet, Deep3D).

Deep3DFaceRecon_pytorch (``models/networks.py``) and the MSMA/MLANet code (``danielle20010405/MLANet-MSMT``,
``models/MSMTNet/multifusion-multitask-MLKA.py``, ``models/MLANet/bottle_co-downaff.py``) each keep a copy of
torchvision's ResNet ("ResNet v1.5": stride on the 3x3 conv) and initialise it from torchvision's ImageNet
checkpoint ``resnet50-0676ba61.pth``. This module is msma's own implementation of that layout, so the same
checkpoint loads by key: ``conv1``, ``bn1``, ``layer{1-4}.{i}.{conv1,bn1,conv2,bn2,conv3,bn3,downsample.0/1}``
(no ``fc``). A bottleneck may carry an attention module between its 3x3 conv and ``bn2`` (``attn``; MLANet's
coordinate attention). Initialisation as torchvision / the authors' files: Kaiming-normal (fan_out, ReLU) for
every conv, BN weight 1 and bias 0, no zero-init of the last BN.

Input: images as the caller gives them (the authors feed [0, 1] RGB without ImageNet normalisation).
Output of :meth:`ResNet.forward`: the four stage maps (strides 4, 8, 16, 32).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from msma.models.backbone import PretrainedWeightsError, host_unreachable, load_weights_file

__all__ = [
    "RESNET_DEPTHS",
    "TORCHVISION_WEIGHTS",
    "ResNet",
    "build_resnet",
    "find_imagenet_weights",
    "init_conv_bn",
    "load_imagenet_weights",
]

#: arch -> (block kind, blocks per stage). torchvision ``models/resnet.py``.
RESNET_DEPTHS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}

#: torchvision ImageNet checkpoints (IMAGENET1K_V1), as named by the authors' ``model_urls``.
TORCHVISION_WEIGHTS: dict[str, str] = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
}

#: Factory of the module inserted after a block's last 3x3 conv (argument: its width), or None.
AttnFactory = Callable[[int], nn.Module] | None


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """ResNet-18/34 block: 3x3 -> BN -> ReLU -> 3x3 -> [attn] -> BN, + shortcut, ReLU."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None, attn: AttnFactory) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.attn = attn(planes) if attn is not None else None
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C_in, H, W) -> (B, planes, H / stride, W / stride)."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.conv2(out)
        if self.attn is not None:
            out = self.attn(out)
        out = self.bn2(out)
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet-50 block (v1.5): 1x1 -> BN -> ReLU -> 3x3 (stride) -> [attn] -> BN -> ReLU -> 1x1 -> BN, + shortcut.

    ``attn`` sits where MLANet's ``bottle_atten`` (coordinate attention) sits: after conv2, before bn2.
    """

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None, attn: AttnFactory) -> None:
        super().__init__()
        self.conv1 = _conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.attn = attn(planes) if attn is not None else None
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * 4)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C_in, H, W) -> (B, 4 planes, H / stride, W / stride)."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.conv2(out)
        if self.attn is not None:
            out = self.attn(out)
        out = self.relu(self.bn2(out))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def init_conv_bn(module: nn.Module) -> None:
    """The authors' / torchvision's init of every sub-module: Kaiming-normal (fan_out, ReLU) conv weights
    (biases keep PyTorch's default), BatchNorm/GroupNorm weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1.0)
            nn.init.constant_(m.bias, 0.0)


class ResNet(nn.Module):
    """Stem + four stages in torchvision's layout, without the classifier.

    Args:
        arch: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
        attn: optional factory of a module placed after each block's last 3x3 conv (before its BN).

    Attributes:
        name: ``arch``.
        channels: output channels of the four stages (ResNet-50: 256, 512, 1024, 2048).
        reductions: their strides (4, 8, 16, 32).
    """

    def __init__(self, arch: str = "resnet50", attn: AttnFactory = None) -> None:
        super().__init__()
        if arch not in RESNET_DEPTHS:
            raise ValueError(
                f"backbone {arch!r}: the authors' networks use torchvision ResNets {sorted(RESNET_DEPTHS)}"
            )
        kind, blocks = RESNET_DEPTHS[arch]
        block: type[BasicBlock] | type[Bottleneck] = Bottleneck if kind == "bottleneck" else BasicBlock
        self.name = arch
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = 64
        stages = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or cin != planes * block.expansion:
                down = nn.Sequential(
                    _conv1x1(cin, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
                )
            layers: list[nn.Module] = [block(cin, planes, stride, down, attn)]
            cin = planes * block.expansion
            layers += [block(cin, planes, 1, None, attn) for _ in range(1, n)]
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.channels: tuple[int, int, int, int] = tuple(p * block.expansion for p in (64, 128, 256, 512))  # type: ignore[assignment]
        self.reductions: tuple[int, int, int, int] = (4, 8, 16, 32)
        init_conv_bn(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: (B, 3, H, W) -> [(B, C_i, ceil(H / s_i), ceil(W / s_i)) for strides s = 4, 8, 16, 32]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        return [x1, x2, x3, x4]


def find_imagenet_weights(arch: str) -> Path | None:
    """torchvision's checkpoint of ``arch`` in torch hub's cache (``$TORCH_HOME/hub/checkpoints/``), if there."""
    url = TORCHVISION_WEIGHTS.get(arch)
    if url is None:
        return None
    candidate = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    return candidate if candidate.is_file() else None


def load_imagenet_weights(
    model: ResNet, pretrained: bool, pretrained_path: str | None = None, allow_random_init: bool = False
) -> None:
    """Loads torchvision ImageNet weights into ``model`` (in place).

    Sources in order: ``pretrained_path``; torch hub's cache; a download of :data:`TORCHVISION_WEIGHTS` unless
    ``HF_HUB_OFFLINE`` is set or the host does not answer. Every key of the file except ``fc.*`` must fit; keys
    the file lacks are allowed only for modules that are not part of torchvision's ResNet (``attn``).

    Raises:
        PretrainedWeightsError: weights requested but unavailable (unless ``allow_random_init``: then a
            warning), or a file that does not fit.
    """
    if not pretrained and not pretrained_path:
        return
    source: str
    if pretrained_path:
        state = load_weights_file(pretrained_path)
        source = f"pretrained_path {pretrained_path!r}"
    else:
        cached = find_imagenet_weights(model.name)
        url = TORCHVISION_WEIGHTS[model.name]
        if cached is not None:
            state = load_weights_file(cached)
            source = f"cached weights {str(cached)!r}"
        else:
            offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
            reason = "HF_HUB_OFFLINE is set" if offline else host_unreachable("download.pytorch.org")
            if reason is None:
                try:
                    state = dict(torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True))
                    source = url
                except Exception as err:  # network or file errors: reported below
                    reason = f"download failed: {type(err).__name__}: {err}"
            if reason is not None:
                message = (
                    f"ImageNet weights for {model.name} are not available ({reason}): put torchvision's "
                    f"{os.path.basename(url)} ({url}) into {Path(torch.hub.get_dir()) / 'checkpoints'} or give "
                    "model.pretrained_path=<file>; or model.allow_random_init=true / model.pretrained=false."
                )
                if not allow_random_init:
                    raise PretrainedWeightsError(message)
                warnings.warn(message + " Continuing with random weights.", stacklevel=2)
                return
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    bad = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    missing = sorted(k for k in set(own) - set(state) if ".attn." not in k)
    if unexpected or bad or missing:
        raise PretrainedWeightsError(
            f"{source}: not torchvision {model.name} weights (unexpected {unexpected[:4]}, shape mismatch "
            f"{bad[:4]}, missing {missing[:4]})"
        )
    model.load_state_dict(state, strict=False)


def build_resnet(
    arch: str = "resnet50",
    attn: AttnFactory = None,
    pretrained: bool = False,
    pretrained_path: str | None = None,
    allow_random_init: bool = False,
) -> ResNet:
    """:class:`ResNet` with torchvision ImageNet weights when asked (see :func:`load_imagenet_weights`)."""
    model = ResNet(arch, attn)
    load_imagenet_weights(model, pretrained, pretrained_path, allow_random_init)
    return model
