"""The authors' networks (msma_lka = MSMA, mlanet = MLANet, deep3d_r50 = Deep3D), pinned structurally.

Reference: danielle20010405/MLANet-MSMT (models/MSMTNet/multifusion-multitask-MLKA.py,
models/MLANet/bottle_co-downaff.py, models/attention.py) and Deep3DFaceRecon_pytorch (models/networks.py).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from msma.face_model.params import CoeffLayout
from msma.models import build_encoder
from msma.models.fusion import AFF
from msma.models.lka import MLKA
from msma.models.mlanet import CoordAtt, MLANet
from msma.models.msma import MSMANet, mlka_width
from msma.models.resnet import Bottleneck, ResNet

BFM = CoeffLayout(80, 64, 80)  # Deep3D's 257 layout
SMALL = CoeffLayout(5, 4, 3)


def _trainable(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def msma_bfm() -> MSMANet:
    torch.manual_seed(0)
    enc = build_encoder("msma_lka", BFM)
    assert isinstance(enc, MSMANet)
    return enc.eval()


def test_parameter_counts_of_the_257_layout(msma_bfm: MSMANet) -> None:
    """The counts of the parameters that take part in the reference's forward pass (dead modules excluded)."""
    assert _trainable(msma_bfm) == 105_732_397
    assert _trainable(build_encoder("mlanet", BFM)) == 32_458_121
    assert _trainable(build_encoder("deep3d_r50", BFM)) == 24_034_625
    # the parts the issue names: fuse layers 50.03 M, MLKA 18.80 M, adjust + 2048 convs 12.87 M
    assert _trainable(msma_bfm.fuse_layers) == 50_029_568
    assert _trainable(msma_bfm.mlka) == 18_800_616
    assert _trainable(msma_bfm.adjust) + _trainable(msma_bfm.to_readout) == 12_867_588
    # head sizes follow the layout
    small = build_encoder("msma_lka", SMALL)
    assert small.heads.id.out_features == 5 and small.heads.tex.out_features == 3  # type: ignore[union-attr]


def test_msma_shapes_reaching_mlka_and_zero_output_at_224(msma_bfm: MSMANet) -> None:
    seen: list[tuple[int, ...]] = []
    hooks = [m.register_forward_pre_hook(lambda _m, a: seen.append(tuple(a[0].shape[1:]))) for m in msma_bfm.mlka]
    try:
        with torch.no_grad():
            out = msma_bfm(torch.rand(1, 3, 224, 224))
    finally:
        for h in hooks:
            h.remove()
    assert seen == [(513, 28, 28), (1026, 14, 14), (2049, 7, 7)]
    assert [mlka_width(c) for c in (512, 1024, 2048)] == [513, 1026, 2049]
    assert all(isinstance(m, MLKA) and torch.count_nonzero(m.scale) == 0 for m in msma_bfm.mlka)  # identity at init
    for g, t in out.items():
        assert torch.count_nonzero(t) == 0, g  # zero-initialised heads


def test_msma_fusion_is_in_place_and_spatial() -> None:
    """Fused branches: stage 1 unpooled, stages 2-4 pooled then made spatial by stage 1's stride-2 paths; each
    branch is relu(... relu(relu(b_i + p_i0) + p_i1) ...) with later branches reading the fused earlier ones."""
    torch.manual_seed(0)
    enc = build_encoder("msma_lka", SMALL, backbone="resnet18").eval()
    assert isinstance(enc, MSMANet)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        stages = enc.backbone(x)
        fused = enc.fuse(stages)
        ref = [stages[0], *(s.mean(dim=(2, 3), keepdim=True) for s in stages[1:])]
        for i in range(4):
            y = ref[i]
            for j in range(4):
                if j == i:
                    continue
                z = enc.fuse_layers[i][j](ref[j])  # type: ignore[index]
                if j > i:  # coarser (pooled 1x1) branch: bilinear resize = broadcast
                    z = F.interpolate(z, size=tuple(y.shape[-2:]), mode="bilinear", align_corners=False)
                y = torch.relu(y + z)
                ref[i] = y
    assert [tuple(f.shape) for f in fused] == [(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4), (2, 512, 2, 2)]
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b)
    # a down path has i - j stride-2 steps, ReLU between them only
    path = enc.fuse_layers[3][0]  # type: ignore[index]
    assert len(path) == 3 and isinstance(path[0][2], nn.ReLU) and len(path[2]) == 2  # type: ignore[index,arg-type]
    assert isinstance(enc.fuse_layers[0][0], nn.Identity)  # type: ignore[index]


def test_msma_readout_is_a_centre_sample() -> None:
    torch.manual_seed(0)
    enc = build_encoder("msma_lka", SMALL, backbone="resnet18").eval()
    assert isinstance(enc, MSMANet)
    maps = [torch.randn(2, c, s, s) for c, s in zip((129, 258, 513), (28, 14, 7))]
    with torch.no_grad():
        got = enc.readout(maps, (1, 1))
        centre = [
            maps[0][:, :, 13:15, 13:15].mean(dim=(2, 3), keepdim=True),  # 28x28: mean of the centre 2x2
            maps[1][:, :, 6:8, 6:8].mean(dim=(2, 3), keepdim=True),  # 14x14: centre 2x2
            maps[2][:, :, 3:4, 3:4],  # 7x7: the centre pixel
        ]
        want = [conv(c).flatten(1) for conv, c in zip(enc.to_readout, centre)]
        glob = [conv(m.mean(dim=(2, 3), keepdim=True)).flatten(1) for conv, m in zip(enc.to_readout, maps)]
    for g, w, m in zip(got, want, glob):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
        assert (g - m).abs().max() > 1e-2  # not a global mean


def test_msma_head_to_branch_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    enc = build_encoder("msma_lka", SMALL, backbone="resnet18").eval()
    assert isinstance(enc, MSMANet)
    with torch.no_grad():
        for p in enc.heads.parameters():
            p.normal_()
    feats = [torch.randn(2, 512) for _ in range(3)]  # readout of branches 1 (stage 2), 2 (stage 3), 3 (stage 4)
    monkeypatch.setattr(enc, "readout", lambda attended, size: feats)
    with torch.no_grad():
        out = enc(torch.rand(2, 3, 64, 64))
        h = enc.heads
        b1, b2, b3 = feats
        torch.testing.assert_close(out.id, h.id(b3))
        torch.testing.assert_close(out.exp, h.exp(b3))
        torch.testing.assert_close(out.tex, h.tex(b2))
        torch.testing.assert_close(out.angles, h.angles(b2))
        torch.testing.assert_close(out.sh, h.sh(b1))
        torch.testing.assert_close(out.trans[:, :2], h.txy(b1) * 100.0)
        torch.testing.assert_close(out.trans[:, 2:], h.tz(b3) * 100.0)


def test_mlanet_coordinate_attention_sits_before_bn2() -> None:
    torch.manual_seed(0)
    enc = build_encoder("mlanet", SMALL).train()
    assert isinstance(enc, MLANet) and isinstance(enc.backbone, ResNet)
    blocks = [m for m in enc.backbone.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16 and all(isinstance(b.attn, CoordAtt) for b in blocks)
    ca = blocks[4].attn  # layer2.1: width 128
    assert isinstance(ca, CoordAtt) and ca.conv1.out_channels == 8 and ca.conv1.bias is not None  # max(8, 128 // 32)
    assert blocks[-1].attn.conv1.out_channels == 16  # type: ignore[union-attr]  # 512 // 32
    seen: dict[str, torch.Tensor] = {}
    b = blocks[4]
    hooks = [
        b.conv2.register_forward_hook(lambda _m, _a, o: seen.__setitem__("conv2", o.clone())),
        b.attn.register_forward_pre_hook(lambda _m, a: seen.__setitem__("attn_in", a[0].clone())),  # type: ignore[union-attr]
        b.attn.register_forward_hook(lambda _m, _a, o: seen.__setitem__("attn_out", o.clone())),  # type: ignore[union-attr]
        b.bn2.register_forward_pre_hook(lambda _m, a: seen.__setitem__("bn2_in", a[0].clone())),
    ]
    try:
        enc(torch.rand(2, 3, 64, 64))
    finally:
        for h in hooks:
            h.remove()
    assert torch.equal(seen["attn_in"], seen["conv2"])  # right after the 3x3 conv (no BN/ReLU in between)
    assert torch.equal(seen["bn2_in"], seen["attn_out"])  # and before bn2
    assert (seen["bn2_in"] < 0).any()  # pre-BN, pre-ReLU values


def test_mlanet_aff_steps_include_stage_1() -> None:
    enc = build_encoder("mlanet", BFM)
    assert isinstance(enc, MLANet)
    assert [(d.in_channels, d.out_channels, d.stride, d.kernel_size) for d in enc.down] == [  # type: ignore[union-attr]
        (256, 512, (2, 2), (1, 1)),
        (512, 1024, (2, 2), (1, 1)),
        (1024, 2048, (2, 2), (1, 1)),
    ]
    assert [a.local_att[0].in_channels for a in enc.aff] == [512, 1024, 2048]  # type: ignore[index,union-attr]
    assert enc.heads.id.in_features == 2048


def test_aff_formula() -> None:
    torch.manual_seed(0)
    aff = AFF(16, r=4).eval()
    assert isinstance(aff.global_att[-1], nn.BatchNorm2d) and isinstance(aff.local_att[-1], nn.BatchNorm2d)
    x, y = torch.randn(2, 16, 5, 5), torch.randn(2, 16, 5, 5)
    with torch.no_grad():
        for p in aff.parameters():
            p.normal_(0, 0.5)
        w = torch.sigmoid(aff.local_att(x + y) + aff.global_att(x + y))
        torch.testing.assert_close(aff(x, y), 2 * x * w + 2 * y * (1 - w))
        for branch in (aff.local_att, aff.global_att):  # both BNs output 0: w = 1/2, output x + y
            branch[-1].weight.zero_()
            branch[-1].bias.zero_()
        torch.testing.assert_close(aff(x, y), x + y)


def test_deep3d_is_resnet_plus_pooled_heads() -> None:
    torch.manual_seed(0)
    enc = build_encoder("deep3d_r50", SMALL, backbone="resnet18").eval()
    with torch.no_grad():
        for p in enc.heads.parameters():
            p.normal_()
        x = torch.rand(2, 3, 64, 64)
        feat = enc.backbone(x)[-1].mean(dim=(2, 3))
        torch.testing.assert_close(enc(x).id, enc.heads.id(feat))


def test_torchvision_weights_load_by_key(tmp_path: pytest.TempPathFactory) -> None:
    """A torchvision-format ResNet checkpoint (keys conv1, bn1, layerN.i.*, fc.*) loads; attention stays."""
    from pathlib import Path

    import torchvision

    torch.manual_seed(3)
    tv = torchvision.models.resnet18()
    path = Path(str(tmp_path)) / "resnet18-f37072fd.pth"
    torch.save(tv.state_dict(), path)
    for name in ("deep3d_r50", "mlanet", "msma_lka"):
        enc = build_encoder(name, SMALL, backbone="resnet18", pretrained_path=str(path))
        torch.testing.assert_close(enc.backbone.conv1.weight, tv.conv1.weight)  # type: ignore[union-attr]
        torch.testing.assert_close(enc.backbone.layer3[1].bn2.running_var, tv.layer3[1].bn2.running_var)  # type: ignore[union-attr,index]
    with torch.no_grad():
        x = torch.rand(1, 3, 64, 64)
        body = build_encoder("deep3d_r50", SMALL, backbone="resnet18", pretrained_path=str(path)).backbone.eval()
        tv.eval()
        want = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
        torch.testing.assert_close(body(x)[-1], want)
