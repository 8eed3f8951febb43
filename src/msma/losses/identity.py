"""Identity (perceptual) loss with a frozen ArcFace iresnet, as Deep3DFaceRecon's ``feat`` loss.

Deep3DFaceRecon_pytorch (``models/losses.py`` ``perceptual_loss``, ``models/networks.py`` recognition
wrapper, ``util/preprocess.py`` ``estimate_norm``) crops input and render to 112x112 with a similarity fitted
from 5 landmarks to insightface's ArcFace template, maps them to [-1, 1], embeds both with an insightface
``arcface_torch`` iresnet (``ms1mv3_arcface_r50_fp16/backbone.pth``) and minimises ``1 - cos`` of the
L2-normalised embeddings. The input crop uses the target landmarks and the render crop the predicted ones.

The iresnet here is written from the published structure of insightface's ``arcface_torch`` backbones
(pre-activation basic blocks BN-conv3x3-BN-PReLU-conv3x3(stride)-BN, stem conv3x3-BN-PReLU, four stages of
64/128/256/512 channels with stride 2, then BN2d, flatten, dropout, a 512*7*7 -> 512 linear layer and BN1d);
parameter names follow those checkpoints so ``backbone.pth`` loads with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msma.losses.config import IRESNET_ARCHS
from msma.utils.precision import full_precision

#: Blocks per stage of insightface's iresnet variants (``backbones/iresnet.py``, ``iresnet2060.py``).
IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}
if tuple(IRESNET_LAYERS) != IRESNET_ARCHS:  # the config's list of valid names must follow this table
    raise RuntimeError(f"iresnet tables disagree: {tuple(IRESNET_LAYERS)} vs {IRESNET_ARCHS}")

#: insightface's ArcFace 5-point template for a 112x112 crop (``recognition/common/face_align.py``
#: ``arcface_src``, also in Deep3D's ``util/preprocess.py``): left eye, right eye, nose tip, left and right
#: mouth corners (image left/right), pixel coordinates x right, y down.
ARCFACE_TEMPLATE_112: tuple[tuple[float, float], ...] = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)
#: Input size of the recognition network.
ARCFACE_SIZE = 112


class IBasicBlock(nn.Module):
    """Pre-activation residual block of insightface's iresnet.

    Args:
        inplanes: input channels.
        planes: output channels.
        stride: stride of the second convolution.
        downsample: projection of the shortcut (1x1 conv + BN) when the shape changes, else None.
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """(B, inplanes, H, W) -> (B, planes, H / stride, W / stride)."""
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """ArcFace iresnet face-recognition backbone.

    Args:
        layers: blocks in each of the four stages (see :data:`IRESNET_LAYERS`).
        num_features: embedding size.
        dropout: dropout probability before the embedding layer (0 at inference).
    """

    def __init__(self, layers: tuple[int, int, int, int], num_features: int = 512, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        inplanes = 64
        stages = []
        for planes, blocks in zip((64, 128, 256, 512), layers):
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=2, bias=False), nn.BatchNorm2d(planes, eps=1e-5)
            )
            stage = [IBasicBlock(inplanes, planes, 2, downsample)]
            stage += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
            stages.append(nn.Sequential(*stage))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(512 * 7 * 7, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, 112, 112) image in [-1, 1] -> (B, num_features) embedding (not normalised)."""
        if x.shape[-2:] != (ARCFACE_SIZE, ARCFACE_SIZE):
            raise ValueError(f"iresnet expects (B, 3, 112, 112) crops, got {tuple(x.shape)}")
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def build_iresnet(arch: str = "r50", num_features: int = 512) -> IResNet:
    """A randomly initialised iresnet of the named depth (``r18``, ``r34``, ``r50``, ``r100``, ``r200``)."""
    if arch not in IRESNET_LAYERS:
        raise ValueError(f"unknown iresnet architecture {arch!r}; known: {sorted(IRESNET_LAYERS)}")
    return IResNet(IRESNET_LAYERS[arch], num_features=num_features)


def load_iresnet(path: str | Path, arch: str = "r50") -> IResNet:
    """Loads an insightface ``arcface_torch`` ``backbone.pth`` state dict into a frozen, eval-mode iresnet.

    Accepts a bare state dict, one under a ``"state_dict"`` key, and ``module.``-prefixed (DDP) names.
    Loaded with ``torch.load(weights_only=True)``: no code in the file is executed.

    Args:
        path: the weights file.
        arch: iresnet depth of those weights.

    Returns:
        The network with ``requires_grad`` False everywhere, in eval mode.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a state dict, or it does not match the architecture.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"identity loss: face-recognition weights not found at {path} (set loss.identity_weights to an "
            "insightface arcface_torch backbone.pth, or disable loss.use_identity)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any load failure is re-raised with the file name
        raise ValueError(f"identity loss: cannot read {path} as a PyTorch state dict: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"identity loss: {path} does not hold a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    net = build_iresnet(arch)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"identity loss: {path} does not match iresnet {arch!r}: {exc}") from exc
    net.requires_grad_(False)
    return net.eval()


def five_point_landmarks(landmarks: Tensor) -> Tensor:
    """The 5 alignment points of 68 landmarks, in the ArcFace template's order (Deep3D ``extract_5p``).

    Args:
        landmarks: (B, 68, 2) pixel coordinates.

    Returns:
        (B, 5, 2): mean(36, 39), mean(42, 45), 30, 48, 54 (0-based): eye centres, nose tip, mouth corners.
    """
    if landmarks.ndim != 3 or landmarks.shape[1:] != (68, 2):
        raise ValueError(f"expected (B, 68, 2) landmarks, got {tuple(landmarks.shape)}")
    lm = landmarks
    return torch.stack(
        [(lm[:, 36] + lm[:, 39]) / 2, (lm[:, 42] + lm[:, 45]) / 2, lm[:, 30], lm[:, 48], lm[:, 54]], dim=1
    )


def similarity_transform(src: Tensor, dst: Tensor) -> Tensor:
    """Least-squares 2D similarity (rotation, uniform scale, translation; no reflection) mapping src to dst.

    Args:
        src: (B, K, 2) source points.
        dst: (K, 2) or (B, K, 2) destination points.

    Returns:
        (B, 2, 3) affine matrices ``M`` with ``dst ~ M[:, :, :2] @ src + M[:, :, 2]``.
    """
    if dst.ndim == 2:
        dst = dst.expand(src.shape[0], -1, -1)
    src_mean, dst_mean = src.mean(dim=1, keepdim=True), dst.mean(dim=1, keepdim=True)
    p, q = src - src_mean, dst - dst_mean
    norm = (p**2).sum(dim=(1, 2)).clamp_min(1e-12)
    a = (p * q).sum(dim=(1, 2)) / norm
    b = (p[..., 0] * q[..., 1] - p[..., 1] * q[..., 0]).sum(dim=1) / norm
    rot = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], dim=1)  # (B, 2, 2)
    t = dst_mean[:, 0] - (rot @ src_mean[:, 0, :, None])[..., 0]
    return torch.cat([rot, t[..., None]], dim=2)


def warp_affine(image: Tensor, matrix: Tensor, size: int) -> Tensor:
    """Resamples ``image`` so that output pixel ``y`` shows input pixel ``M^-1 y`` (bilinear, zeros outside).

    Args:
        image: (B, C, H, W).
        matrix: (B, 2, 3) input-pixel -> output-pixel affine maps (pixel-index coordinates, x right, y down).
        size: output side in pixels.

    Returns:
        (B, C, size, size).
    """
    b, _, h, w = image.shape
    full = torch.cat([matrix, matrix.new_tensor([0.0, 0.0, 1.0]).expand(b, 1, 3)], dim=1)
    inv = torch.linalg.inv(full)[:, :2]  # output pixel -> input pixel
    coords = torch.arange(size, device=image.device, dtype=image.dtype)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    out_pix = torch.stack([xx, yy, torch.ones_like(xx)], dim=-1).reshape(1, -1, 3)  # (1, S*S, 3)
    src = out_pix @ inv.to(image.dtype).transpose(1, 2)  # (B, S*S, 2)
    scale = torch.tensor([w, h], device=image.device, dtype=image.dtype)
    grid = ((src + 0.5) / scale * 2.0 - 1.0).reshape(b, size, size, 2)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class IdentityLoss(nn.Module):
    """``mean_b (1 - cos(f(crop(I_b)), f(crop(R_b))))`` with a frozen face-recognition network ``f``.

    The network is kept out of this module's parameters and state dict (it is frozen and can be reloaded from
    its file; keeping it out keeps training checkpoints small), always in eval mode, and moved by ``.to()``.

    Args:
        weights: path of an insightface ``arcface_torch`` ``backbone.pth``.
        arch: iresnet depth of those weights.
        network: an already-built recognition network to use instead of ``weights`` (tests, other backbones):
            maps (B, 3, 112, 112) in [-1, 1] to (B, D) embeddings.
    """

    def __init__(
        self,
        weights: str | Path | None = None,
        arch: str = "r50",
        network: nn.Module | Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        if network is None:
            if weights is None:
                raise ValueError(
                    "identity loss enabled but no face-recognition weights path given (loss.identity_weights)"
                )
            network = load_iresnet(weights, arch)
        if isinstance(network, nn.Module):
            network.requires_grad_(False)
            network.eval()
        self._holder: list[nn.Module | Callable[[Tensor], Tensor]] = [network]
        self.template: Tensor
        self.register_buffer("template", torch.tensor(ARCFACE_TEMPLATE_112), persistent=False)

    @property
    def network(self) -> nn.Module | Callable[[Tensor], Tensor]:
        """The frozen recognition network."""
        return self._holder[0]

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> IdentityLoss:
        super()._apply(fn, recurse)
        net = self._holder[0]
        if isinstance(net, nn.Module):
            net._apply(fn)
        return self

    def embed(self, image: Tensor, landmarks: Tensor) -> Tensor:
        """Aligned 112x112 crops -> L2-normalised embeddings.

        Args:
            image: (B, 3, H, W) RGB in [0, 1].
            landmarks: (B, 68, 2) pixel coordinates used for the alignment (not differentiated).

        Returns:
            (B, D) unit embeddings.
        """
        # Alignment in full precision even inside a mixed-precision step (bf16 would move pixels by ~0.5 px).
        dtype = torch.promote_types(image.dtype, torch.float32)
        with full_precision(image.device):
            lm5 = five_point_landmarks(landmarks.detach().to(dtype))
            matrix = similarity_transform(lm5, self.template.to(dtype))
            crop = warp_affine(image.to(dtype), matrix, ARCFACE_SIZE)
        net = self._holder[0]
        if isinstance(net, nn.Module):
            net.eval()
        return F.normalize(net(2.0 * crop - 1.0), dim=-1)

    def forward(
        self,
        image: Tensor,
        rendered: Tensor,
        target_landmarks: Tensor,
        predicted_landmarks: Tensor,
        landmark_valid: Tensor | None = None,
    ) -> Tensor:
        """Computes the loss.

        Args:
            image: (B, 3, H, W) input RGB in [0, 1].
            rendered: (B, 3, H, W) rendered RGB in [0, 1] (Deep3D uses the raw render, background black).
            target_landmarks: (B, 68, 2) landmarks of the input (crop of ``image``); NaN rows allowed.
            predicted_landmarks: (B, 68, 2) projected model landmarks (crop of ``rendered``, and of ``image``
                where the target is unknown).
            landmark_valid: (B,) bool rows where ``target_landmarks`` are known; None derives it from NaNs.

        Returns:
            Scalar in [0, 2].
        """
        if landmark_valid is None:
            landmark_valid = torch.isfinite(target_landmarks).all(dim=(1, 2))
        ok = landmark_valid.to(torch.bool) & torch.isfinite(target_landmarks).all(dim=(1, 2))
        input_lm = torch.where(ok[:, None, None], target_landmarks, predicted_landmarks.detach())
        with torch.no_grad():
            f_in = self.embed(image, input_lm)
        f_out = self.embed(rendered, predicted_landmarks)
        return (1.0 - (f_in * f_out).sum(dim=-1)).mean()
