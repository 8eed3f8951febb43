"""Identity (ArcFace) loss: alignment helpers, safe loading, clear errors, a random network file."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from msma.losses.identity import (
    ARCFACE_TEMPLATE_112,
    IdentityLoss,
    build_iresnet,
    five_point_landmarks,
    load_iresnet,
    similarity_transform,
    warp_affine,
)


@pytest.fixture(scope="module")
def r18_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = build_iresnet("r18")
    path = tmp_path_factory.mktemp("arcface") / "backbone.pth"
    # as insightface saves it from DDP training: a bare state dict with "module." names
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)
    return path


def test_iresnet_parameter_names_follow_arcface_torch() -> None:
    names = set(build_iresnet("r18").state_dict())
    for key in (
        "conv1.weight",
        "bn1.running_mean",
        "prelu.weight",
        "layer1.0.bn1.weight",
        "layer1.0.conv1.weight",
        "layer1.0.bn2.weight",
        "layer1.0.prelu.weight",
        "layer1.0.conv2.weight",
        "layer1.0.bn3.weight",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.running_var",
        "layer4.1.conv2.weight",
        "bn2.weight",
        "fc.weight",
        "features.running_mean",
    ):
        assert key in names, key
    assert "layer1.1.downsample.0.weight" not in names
    net = build_iresnet("r50")
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == [3, 4, 14, 3]
    assert net.fc.in_features == 512 * 7 * 7


def test_missing_weights_error_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "backbone.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        IdentityLoss(missing)
    with pytest.raises(ValueError, match="identity_weights"):
        IdentityLoss(None)


def test_wrong_architecture_or_garbage_file_errors(r18_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"does not match iresnet 'r34'"):
        load_iresnet(r18_file, "r34")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth"):
        load_iresnet(bad)
    with pytest.raises(ValueError, match="unknown iresnet"):
        build_iresnet("r7")


def test_similarity_transform_recovers_a_known_similarity() -> None:
    src = torch.rand(2, 5, 2) * 100
    angle, scale, shift = 0.3, 1.7, torch.tensor([5.0, -3.0])
    rot = scale * torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    dst = src @ rot.T + shift
    m = similarity_transform(src, dst)
    assert torch.allclose(m[:, :, :2], rot.expand(2, 2, 2), atol=1e-4)
    assert torch.allclose(m[:, :, 2], shift.expand(2, 2), atol=1e-3)


def test_warp_affine_identity_and_landmarks_land_on_the_template() -> None:
    torch.manual_seed(1)
    image = torch.rand(1, 3, 112, 112)
    eye = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    assert torch.allclose(warp_affine(image, eye, 112), image, atol=1e-5)
    # a bright dot at an input landmark must appear at the matching template point after alignment
    lm = torch.rand(1, 68, 2) * 40 + 90
    template = torch.tensor(ARCFACE_TEMPLATE_112)
    five = five_point_landmarks(lm)
    m = similarity_transform(five, template)
    mapped = five @ m[0, :, :2].T + m[0, :, 2]
    canvas = torch.zeros(1, 1, 224, 224)
    x, y = (int(round(v)) for v in five[0, 2].tolist())
    canvas[..., y - 1 : y + 2, x - 1 : x + 2] = 1.0
    crop = warp_affine(canvas, m, 112)
    peak = torch.nonzero(crop[0, 0] == crop[0, 0].max())[0].float()
    expected = mapped[0, 2].flip(0)  # (row, col)
    assert (peak - expected).abs().max() <= 2.0


def test_identity_loss_with_random_network(r18_file: Path) -> None:
    loss_fn = IdentityLoss(r18_file, arch="r18")
    assert loss_fn.state_dict() == {}  # the frozen network stays out of checkpoints
    assert list(loss_fn.parameters()) == []
    torch.manual_seed(2)
    image = torch.rand(2, 3, 64, 64)
    lm = torch.rand(2, 68, 2) * 30 + 17
    same = loss_fn(image, image, lm, lm)
    assert same.item() == pytest.approx(0.0, abs=1e-5)

    rendered = torch.rand(2, 3, 64, 64, requires_grad=True)
    target = lm.clone()
    target[1] = float("nan")
    loss = loss_fn(image, rendered, target, lm, torch.tensor([True, False]))
    assert torch.isfinite(loss) and 0.0 < loss.item() <= 2.0
    loss.backward()
    assert rendered.grad is not None and torch.isfinite(rendered.grad).all() and rendered.grad.abs().sum() > 0
    loss_fn.train()
    assert not loss_fn.network.training  # type: ignore[union-attr]
    loss_fn.to(torch.float64)
    assert next(loss_fn.network.parameters()).dtype == torch.float64  # type: ignore[union-attr]
