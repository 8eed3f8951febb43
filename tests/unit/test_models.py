"""Encoders: shapes, zero heads, gradients, msma's variants, registry, config and pretrained handling.

The authors' networks' structure is pinned in test_models_authors.py."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest
import timm
import torch
from omegaconf import OmegaConf
from torch import nn

import msma.models.backbone as backbone_mod
from msma.face_model.params import GROUPS, CoeffLayout, FaceParams
from msma.models import (
    TRANS_UNIT_MM,
    EncoderConfig,
    FaceEncoder,
    MSMASpatialEncoder,
    PretrainedWeightsError,
    available_encoders,
    build_encoder,
    build_encoder_from_config,
)
from msma.models.fusion import AttentionalFeatureFusion, MultiScaleExchange
from msma.models.lka import MLKA, LKABlock
from msma.models.mlanet import CoordinateAttention, MLANetTimmEncoder

LAYOUT = CoeffLayout(n_id=12, n_exp=7, n_tex=9)
SMALL = "resnet18"

VARIANTS: list[tuple[str, dict[str, object]]] = [
    ("msma_spatial", {}),
    ("msma_spatial", {"attention": "lka"}),
    ("msma_spatial", {"attention": "none", "fusion": False}),
    ("msma_spatial", {"attention_on_pooled": True}),
    ("msma_spatial", {"single_scale": True}),
    ("mlanet_timm", {}),
    ("deep3d_r50", {}),
    ("msma_lka", {}),
    ("mlanet", {}),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for n, kw in VARIANTS]


def _build(name: str, **kw: object) -> FaceEncoder:
    torch.manual_seed(0)
    return build_encoder(name, LAYOUT, backbone=SMALL, **kw)  # type: ignore[arg-type]


def _perturb_zero_init(enc: nn.Module, std: float = 0.05) -> None:
    """Randomises every all-zero parameter: the zero-initialised heads and attention output scales, and timm's
    zero-initialised last BN gamma of each residual block. At zero they block every gradient upstream:
    d(out)/d(trunk) = W_head = 0, d(attn out)/d(attn weights) = scale = 0, d(block)/d(branch) = gamma = 0."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in enc.parameters():
            if torch.count_nonzero(p) == 0:
                p.normal_(0.0, std)


def _expected_shapes(batch: int) -> dict[str, tuple[int, int]]:
    return {g: (batch, n) for g, n in LAYOUT.sizes.items()}


@pytest.mark.parametrize(("name", "kw"), VARIANTS, ids=IDS)
def test_shapes_and_zero_output(name: str, kw: dict[str, object]) -> None:
    enc = _build(name, **kw).eval()
    with torch.no_grad():
        for size in (224, 128):
            out = enc(torch.rand(1, 3, size, size))
            assert isinstance(out, FaceParams)
            assert {g: tuple(t.shape) for g, t in out.items()} == _expected_shapes(1)
            # zero-initialised heads: exactly the mean face, frontal, at the origin
            for g, t in out.items():
                assert torch.count_nonzero(t) == 0, g


@pytest.mark.slow
def test_default_backbone_resnet50_shapes() -> None:
    with torch.no_grad():
        for name in available_encoders():
            enc = build_encoder(name, LAYOUT).eval()
            assert enc.backbone.name == "resnet50"  # type: ignore[union-attr]
            out = enc(torch.rand(1, 3, 128, 128))
            assert {g: tuple(t.shape) for g, t in out.items()} == _expected_shapes(1)


@pytest.mark.parametrize(
    ("name", "kw"), [v for v in VARIANTS if not v[1].get("attention_on_pooled")], ids=IDS[:3] + IDS[4:]
)
def test_gradients_reach_every_parameter(name: str, kw: dict[str, object]) -> None:
    enc = _build(name, **kw).train()
    _perturb_zero_init(enc)
    out = enc(torch.rand(2, 3, 64, 64))
    sum(t.square().sum() for _, t in out.items()).backward()  # type: ignore[union-attr]
    missing = [n for n, p in enc.named_parameters() if p.grad is None or torch.count_nonzero(p.grad) == 0]
    assert missing == []


def test_untrained_gradients_reach_heads_only() -> None:
    """Zero heads: the trunk gets exactly zero gradient, the heads a non-zero one (why the test above perturbs)."""
    enc = _build("deep3d_r50").train()
    out = enc(torch.rand(2, 3, 64, 64))
    (out.id - 1.0).square().sum().backward()
    assert enc.heads.id.weight.grad is not None and torch.count_nonzero(enc.heads.id.weight.grad) > 0
    conv1 = enc.backbone.conv1.weight  # type: ignore[union-attr]
    assert conv1.grad is None or torch.count_nonzero(conv1.grad) == 0


def test_attention_on_pooled_sees_only_centre_taps() -> None:
    """Public-code variant: MLKA on 1x1 maps; off-centre taps of every depthwise kernel do not matter."""
    x = torch.rand(2, 3, 64, 64)

    def off_centre_masks(enc: MSMASpatialEncoder) -> list[tuple[torch.Tensor, torch.Tensor]]:
        masks = []
        for m in enc.attn.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1:
                k = m.kernel_size[0]
                mask = torch.ones_like(m.weight, dtype=torch.bool)
                mask[..., k // 2, k // 2] = False
                masks.append((m.weight, mask))
        return masks

    for pooled in (True, False):
        enc = _build("msma_spatial", attention_on_pooled=pooled).eval()
        assert isinstance(enc, MSMASpatialEncoder)
        _perturb_zero_init(enc)
        with torch.no_grad():
            before = LAYOUT.join(enc(x))
            masks = off_centre_masks(enc)
            assert len(masks) == 3 * 9  # 3 scales x (3 chains x 2 depthwise convs + 3 depthwise gates)
            for w, mask in masks:
                w[mask] = torch.randn(int(mask.sum())) * 10.0
            after = LAYOUT.join(enc(x))
        if pooled:
            torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
        else:
            assert (after - before).abs().max() > 1e-3

    # and in training, off-centre taps of the pooled variant get exactly zero gradient
    enc = _build("msma_spatial", attention_on_pooled=True).train()
    _perturb_zero_init(enc)
    out = enc(torch.rand(2, 3, 64, 64))
    sum(t.square().sum() for _, t in out.items()).backward()  # type: ignore[union-attr]
    for w, mask in off_centre_masks(enc):  # type: ignore[arg-type]
        assert w.grad is not None
        assert torch.count_nonzero(w.grad[mask]) == 0
        assert torch.count_nonzero(w.grad[~mask]) > 0


def test_msma_structure_per_option() -> None:
    enc = _build("msma_spatial")
    assert isinstance(enc, MSMASpatialEncoder)
    assert enc.used_scales == (0, 1, 2)
    assert isinstance(enc.exchange, MultiScaleExchange)
    assert all(isinstance(a, MLKA) for a in enc.attn)
    w = [enc.heads.id.in_features, enc.heads.tex.in_features, enc.heads.sh.in_features]
    assert w == [384, 192, 96]  # id from stage 4, tex from stage 3, sh from stage 2
    assert (enc.heads.tz.in_features, enc.heads.txy.in_features, enc.heads.angles.in_features) == (384, 96, 192)

    single = _build("msma_spatial", single_scale=True, fusion=False, attention="lka", channels=(24, 48, 96))
    assert isinstance(single, MSMASpatialEncoder)
    assert single.used_scales == (2,) and single.exchange is None and len(single.proj) == 1
    assert all(isinstance(a, LKABlock) for a in single.attn)
    assert {getattr(single.heads, h).in_features for h in ("id", "tex", "sh", "txy")} == {96}

    none = _build("msma_spatial", attention="none")
    assert isinstance(none, MSMASpatialEncoder) and all(isinstance(a, nn.Identity) for a in none.attn)


def test_mlanet_structure() -> None:
    enc = _build("mlanet_timm")
    assert isinstance(enc, MLANetTimmEncoder)
    assert enc.num_ca_blocks == 8  # resnet18: 2 BasicBlocks x 4 stages
    assert sum(isinstance(m, CoordinateAttention) for m in enc.modules()) == 8
    assert sum(isinstance(m, AttentionalFeatureFusion) for m in enc.modules()) == 2
    with pytest.raises(ValueError, match="ResNet"):
        build_encoder("mlanet_timm", LAYOUT, backbone="mobilenetv3_small_050")


def test_trans_in_millimetres_and_normalisation() -> None:
    enc = _build("msma_spatial").eval()
    with torch.no_grad():
        enc.heads.tz.bias.fill_(1.0)
        enc.heads.angles.bias.fill_(0.25)
        out = enc(torch.rand(1, 3, 64, 64))
    assert out.trans.tolist() == [[0.0, 0.0, TRANS_UNIT_MM]]
    assert TRANS_UNIT_MM == 100.0
    assert out.angles.tolist() == [[0.25, 0.25, 0.25]]
    cfg = timm.get_pretrained_cfg(SMALL)
    assert cfg is not None
    torch.testing.assert_close(enc.pixel_mean.flatten(), torch.tensor(cfg.mean))  # type: ignore[operator]
    torch.testing.assert_close(enc.pixel_std.flatten(), torch.tensor(cfg.std))  # type: ignore[operator]
    img = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(
        enc.normalize(img), (img - torch.tensor(cfg.mean).view(1, 3, 1, 1)) / torch.tensor(cfg.std).view(1, 3, 1, 1)
    )
    with pytest.raises(ValueError, match="RGB"):
        enc(torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match="float"):
        enc(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    # the authors' networks see the [0, 1] image itself
    for name in ("deep3d_r50", "msma_lka", "mlanet"):
        authors = _build(name)
        assert not authors.input_normalized and authors.normalize(img) is img
        with pytest.raises(ValueError, match="RGB"):
            authors(torch.rand(1, 1, 64, 64))


def test_registry_errors() -> None:
    assert set(available_encoders()) == {"msma_lka", "mlanet", "deep3d_r50", "msma_spatial", "mlanet_timm"}
    with pytest.raises(ValueError, match="unknown encoder"):
        build_encoder("resnet", LAYOUT)
    with pytest.raises(ValueError, match="deep3d_r50"):
        build_encoder("deep3d_r50", LAYOUT, backbone=SMALL, attention="lka")
    with pytest.raises(ValueError, match="features_only|timm"):
        build_encoder("msma_spatial", LAYOUT, backbone="no_such_model")
    with pytest.raises(ValueError, match="torchvision ResNets"):
        build_encoder("msma_lka", LAYOUT, backbone="efficientnet_b0")


def test_config_builds_every_encoder_and_passes_options() -> None:
    schema = OmegaConf.structured(EncoderConfig)
    cfg = OmegaConf.merge(
        schema,
        {
            "name": "msma_spatial",
            "backbone": SMALL,
            "attention": "mlka",
            "channels": [12, 24, 48],
            "mlka_kernels": [3, 5],
            "mlka_dilated_kernels": [5, 5],
            "mlka_dilations": [2, 3],
        },
    )
    enc = build_encoder_from_config(cfg, LAYOUT)  # type: ignore[arg-type]
    assert isinstance(enc, MSMASpatialEncoder)
    mlka = enc.attn[0]
    assert isinstance(mlka, MLKA) and mlka.receptive_field == 5 + 3 * 4
    assert enc.heads.sh.in_features == 12
    for name in ("mlanet", "deep3d_r50", "msma_lka", "mlanet_timm"):
        built = build_encoder_from_config(EncoderConfig(name=name, backbone=SMALL), LAYOUT)
        assert built.backbone.name == SMALL  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="same length"):
        build_encoder_from_config(EncoderConfig(name="msma_spatial", backbone=SMALL, mlka_dilations=[2]), LAYOUT)
    with pytest.raises(Exception, match="attnetion"):
        OmegaConf.merge(schema, {"attnetion": "lka"})  # typos fail at compose time


def test_pretrained_offline_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(backbone_mod, "_cached_weights", lambda name: None)
    t0 = time.perf_counter()
    with pytest.raises(PretrainedWeightsError, match="pretrained_path") as info:
        build_encoder("msma_spatial", LAYOUT, backbone=SMALL, pretrained=True)
    assert "allow_random_init" in str(info.value) and SMALL in str(info.value)
    assert time.perf_counter() - t0 < 20.0
    with pytest.warns(UserWarning, match="random weights"):
        enc = build_encoder("msma_spatial", LAYOUT, backbone=SMALL, pretrained=True, allow_random_init=True)
    assert isinstance(enc, FaceEncoder)


def test_pretrained_unreachable_host_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not marked offline but no network: one connection attempt, not the hub client's retries."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(backbone_mod, "_cached_weights", lambda name: None)
    monkeypatch.setattr(backbone_mod, "_download_host", lambda name: "weights.invalid")
    t0 = time.perf_counter()
    with pytest.raises(PretrainedWeightsError, match="cannot reach weights.invalid") as info:
        build_encoder("msma_spatial", LAYOUT, backbone=SMALL, pretrained=True)
    assert "allow_random_init" in str(info.value)
    assert time.perf_counter() - t0 < 20.0


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pretrained_path_loads_weights(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(3)
    ref = timm.create_model(SMALL, pretrained=False)
    path = tmp_path / f"weights{suffix}"
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    if suffix == ".safetensors":
        import safetensors.torch

        safetensors.torch.save_file(sd, str(path))
    else:
        torch.save({"state_dict": sd}, path)
    for name in ("msma_spatial", "mlanet_timm"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no random-init warning
            enc = build_encoder(name, LAYOUT, backbone=SMALL, pretrained=True, pretrained_path=str(path))
        body = enc.backbone.body
        torch.testing.assert_close(body.conv1.weight, ref.conv1.weight)  # type: ignore[union-attr]
        torch.testing.assert_close(body.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)  # type: ignore[union-attr,index]
        torch.testing.assert_close(body.layer2[0].bn1.running_var, ref.layer2[0].bn1.running_var)  # type: ignore[union-attr,index]

    # a features-only state dict (no classifier) loads too
    feats = timm.create_model(SMALL, features_only=True, out_indices=(-1,))
    fpath = tmp_path / "features.pth"
    torch.save(feats.state_dict(), fpath)
    enc = build_encoder("msma_spatial", LAYOUT, backbone=SMALL, pretrained_path=str(fpath))
    torch.testing.assert_close(enc.backbone.body.conv1.weight, feats.conv1.weight)  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ["msma_spatial", "deep3d_r50"])
def test_pretrained_path_errors_name_the_file(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(PretrainedWeightsError, match="nope.pth"):
        build_encoder(name, LAYOUT, backbone=SMALL, pretrained_path=str(missing))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="garbage.pth"):
        build_encoder(name, LAYOUT, backbone=SMALL, pretrained_path=str(garbage))
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(3)}, wrong)
    with pytest.raises(PretrainedWeightsError, match="wrong.pth"):
        build_encoder(name, LAYOUT, backbone=SMALL, pretrained_path=str(wrong))


def test_flat_layout_roundtrip_of_output() -> None:
    enc = _build("msma_spatial").eval()
    _perturb_zero_init(enc)
    with torch.no_grad():
        out = enc(torch.rand(3, 3, 64, 64))
    flat = LAYOUT.join(out)
    assert flat.shape == (3, LAYOUT.total)
    assert torch.isfinite(flat).all() and flat.abs().sum() > 0
    assert tuple(g for g, _ in out.items()) == GROUPS


@pytest.mark.gpu
def test_encoders_train_step_on_cuda() -> None:
    device = torch.device("cuda")
    for name in available_encoders():
        enc = build_encoder(name, LAYOUT, backbone=SMALL).to(device).train()
        _perturb_zero_init(enc)
        out = enc(torch.rand(2, 3, 128, 128, device=device))
        assert out.device.type == "cuda"
        sum(t.square().sum() for _, t in out.items()).backward()  # type: ignore[union-attr]
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in enc.parameters())
