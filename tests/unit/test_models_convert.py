"""The converter from the authors' checkpoints (their key names) to msma's encoders, on synthetic state dicts.

The key lists below are written from the reference's module names (danielle20010405/MLANet-MSMT:
models/MSMTNet/multifusion-multitask-MLKA.py, models/MLANet/bottle_co-downaff.py, models/attention.py;
Deep3DFaceRecon_pytorch models/networks.py), not generated from msma's modules.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from msma.face_model.params import CoeffLayout
from msma.models import build_encoder
from msma.models.convert import convert_authors_state_dict, unwrap_authors_checkpoint

LAYOUT = CoeffLayout(80, 64, 80)
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str) -> list[str]:
    return [f"{prefix}.{p}" for p in BN]


def _resnet50(extra_per_block: list[str]) -> list[str]:
    keys = ["backbone.conv1.weight", *_bn("backbone.bn1")]
    for layer, blocks in zip(range(1, 5), (3, 4, 6, 3)):
        for i in range(blocks):
            p = f"backbone.layer{layer}.{i}"
            for n in (1, 2, 3):
                keys += [f"{p}.conv{n}.weight", *_bn(f"{p}.bn{n}")]
            if i == 0:
                keys += [f"{p}.downsample.0.weight", *_bn(f"{p}.downsample.1")]
            keys += [f"{p}.{e}" for e in extra_per_block]
    return keys


def _ms_cam(prefix: str) -> list[str]:  # attention.py MS_CAM / AFF: local_att 0-4, global_att 1-5
    out = []
    for branch, convs, bns in (("local_att", (0, 3), (1, 4)), ("global_att", (1, 4), (2, 5))):
        out += [f"{prefix}.{branch}.{c}.{w}" for c in convs for w in ("weight", "bias")]
        out += [k for b in bns for k in _bn(f"{prefix}.{branch}.{b}")]
    return out


def _coord_att(prefix: str) -> list[str]:
    return [f"{prefix}.{c}.{w}" for c in ("conv1", "conv_h", "conv_w") for w in ("weight", "bias")] + _bn(
        f"{prefix}.bn1"
    )


def msma_keys() -> list[str]:
    keys = _resnet50(_ms_cam("bottle_atten")[:0])  # bottle_atten keys are added below (dead module)
    for layer, blocks in zip(range(1, 5), (3, 4, 6, 3)):
        for i in range(blocks):
            keys += _ms_cam(f"backbone.layer{layer}.{i}.bottle_atten")
    for i in range(4):
        for j in range(4):
            p = f"backbone.fuse_layers.{i}.{j}"
            if j > i:
                keys += [f"{p}.0.weight", *_bn(f"{p}.1")]
            elif j < i:
                for k in range(i - j):
                    keys += [f"{p}.{k}.0.weight", *_bn(f"{p}.{k}.1")]
    for k in range(3):
        keys += [f"backbone.conv1x1_adjust.{k}.{w}" for w in ("weight", "bias")]
        keys += [f"backbone.conv1x1_2048.{k}.{w}" for w in ("weight", "bias")]
        m = f"backbone.atten_done.{k}"
        keys += [f"{m}.norm.weight", f"{m}.norm.bias", f"{m}.scale"]
        keys += [f"{m}.{g}.{n}.{w}" for g in ("LKA7", "LKA5", "LKA3") for n in (0, 1, 2) for w in ("weight", "bias")]
        keys += [f"{m}.{g}.{w}" for g in ("X3", "X5", "X7") for w in ("weight", "bias")]
        keys += [f"{m}.proj_first.0.{w}" for w in ("weight", "bias")] + [
            f"{m}.proj_last.0.{w}" for w in ("weight", "bias")
        ]
    for h in ("id", "exp", "tex", "angle", "gamma", "trans", "depth"):
        keys += [f"{h}_layer.weight", f"{h}_layer.bias"]
    return keys


def mlanet_keys() -> list[str]:
    keys = _resnet50([])
    for layer, blocks in zip(range(1, 5), (3, 4, 6, 3)):
        for i in range(blocks):
            keys += _coord_att(f"backbone.layer{layer}.{i}.bottle_atten")
    for k in range(4):
        keys += _coord_att(f"backbone.layer_atten.{k}")  # dead
    for k in range(3):
        keys += _ms_cam(f"backbone.fusion.{k}")
        keys += [f"backbone.downsample.{k}.{w}" for w in ("weight", "bias")]
        keys += [f"backbone.channel_change.{k}.{w}" for w in ("weight", "bias")]  # dead
    keys += [f"final_layers.{k}.{w}" for k in range(7) for w in ("weight", "bias")]
    return keys


def deep3d_keys() -> list[str]:
    return _resnet50([]) + [f"final_layers.{k}.{w}" for k in range(7) for w in ("weight", "bias")]


def _synthetic(keys: list[str], network: str) -> dict[str, torch.Tensor]:
    """Random tensors under the authors' keys, shaped like msma's counterpart (dead modules: any shape)."""
    own = build_encoder(network, LAYOUT).state_dict()
    g = torch.Generator().manual_seed(0)
    out = {}
    for k in keys:
        mapped = convert_authors_state_dict({k: torch.zeros(1)}, network)
        if not mapped:
            out[k] = torch.randn(3, generator=g)
            continue
        (target,) = mapped
        shape = own[target].shape
        if target.startswith("heads.") and target.endswith("weight"):
            shape = (*shape, 1, 1)  # their heads are 1x1 convs
        t = own[target]
        out[k] = (
            torch.randint(0, 9, shape, generator=g) if not t.is_floating_point() else torch.randn(shape, generator=g)
        )
    return out


@pytest.mark.parametrize(
    ("network", "keys", "dead"),
    [
        ("msma_lka", msma_keys, 16 * 28),  # MS_CAM per bottleneck: 2 x (4 conv + 10 BN tensors)
        ("mlanet", mlanet_keys, 4 * 11 + 3 * 2),  # layer_atten (CoordAtt) + channel_change
        ("deep3d_r50", deep3d_keys, 0),
    ],
)
def test_authors_state_dict_loads_strictly(network: str, keys, dead: int) -> None:  # type: ignore[no-untyped-def]
    theirs = _synthetic(keys(), network)
    ckpt = {"net_recon": {f"module.{k}": v for k, v in theirs.items()}, "epoch": torch.tensor(40)}
    ours = convert_authors_state_dict(unwrap_authors_checkpoint(ckpt), network)
    assert len(ours) == len(theirs) - dead
    enc = build_encoder(network, LAYOUT)
    enc.load_state_dict(ours, strict=True)  # every msma key present, none left over
    sd = enc.state_dict()
    torch.testing.assert_close(sd["backbone.layer3.5.conv2.weight"], theirs["backbone.layer3.5.conv2.weight"])
    if network == "msma_lka":
        torch.testing.assert_close(sd["heads.id.weight"], theirs["id_layer.weight"][:, :, 0, 0])
        torch.testing.assert_close(sd["heads.sh.bias"], theirs["gamma_layer.bias"])
        torch.testing.assert_close(sd["heads.tz.bias"], theirs["depth_layer.bias"])
        torch.testing.assert_close(sd["mlka.2.lkas.2.1.weight"], theirs["backbone.atten_done.2.LKA7.1.weight"])
        torch.testing.assert_close(sd["mlka.0.gates.1.weight"], theirs["backbone.atten_done.0.X5.weight"])
        torch.testing.assert_close(sd["mlka.1.norm.norm.weight"], theirs["backbone.atten_done.1.norm.weight"])
        torch.testing.assert_close(sd["fuse_layers.3.0.2.0.weight"], theirs["backbone.fuse_layers.3.0.2.0.weight"])
        torch.testing.assert_close(sd["to_readout.1.weight"], theirs["backbone.conv1x1_2048.1.weight"])
    else:
        torch.testing.assert_close(sd["heads.txy.weight"], theirs["final_layers.5.weight"][:, :, 0, 0])
        torch.testing.assert_close(sd["heads.angles.bias"], theirs["final_layers.3.bias"])
    if network == "mlanet":
        torch.testing.assert_close(
            sd["backbone.layer2.3.attn.conv_h.weight"], theirs["backbone.layer2.3.bottle_atten.conv_h.weight"]
        )
        torch.testing.assert_close(
            sd["aff.2.global_att.5.running_var"], theirs["backbone.fusion.2.global_att.5.running_var"]
        )
        torch.testing.assert_close(sd["down.0.bias"], theirs["backbone.downsample.0.bias"])


def test_unknown_keys_and_networks_fail() -> None:
    with pytest.raises(ValueError, match="atten_done.0.LKA9"):
        convert_authors_state_dict({"backbone.atten_done.0.LKA9.0.weight": torch.zeros(1)}, "msma_lka")
    with pytest.raises(ValueError, match="mystery"):
        convert_authors_state_dict({"mystery.weight": torch.zeros(1)}, "deep3d_r50")
    with pytest.raises(ValueError, match="no converter"):
        convert_authors_state_dict({}, "msma_spatial")


def test_convert_cli_writes_an_evaluable_checkpoint(tmp_path: Path, synthetic_bfm_dir: Path) -> None:
    from msma.checkpoint import load_inference_model
    from msma.cli.convert import cli_main

    theirs = _synthetic(deep3d_keys(), "deep3d_r50")
    src = tmp_path / "epoch_20.pth"
    torch.save({"net_recon": theirs}, src)
    out = tmp_path / "deep3d.ckpt"
    assert cli_main(["--network", "deep3d_r50", str(src), str(out), f"face_model.path={synthetic_bfm_dir}"]) == 0
    module = load_inference_model(out)
    torch.testing.assert_close(module.encoder.heads.tex.bias, theirs["final_layers.2.bias"])  # type: ignore[union-attr]
    assert module.face_model.layout.total == 257  # type: ignore[union-attr]


def test_convert_cli_names_a_bad_source_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file that is not the authors' checkpoint (unknown keys, a non-tensor entry, truncated, missing): one line
    naming it, exit 2, no output (these ended with a traceback)."""
    from msma.cli.convert import cli_main

    torch.save({"net_recon": {"conv1.weight": torch.zeros(3)}}, tmp_path / "foreign.pth")
    torch.save({"net_recon": {"conv1.weight": "x"}}, tmp_path / "strings.pth")
    whole = tmp_path / "whole.pth"
    torch.save({"net_recon": {"a": torch.zeros(100)}}, whole)
    (tmp_path / "cut.pth").write_bytes(whole.read_bytes()[:200])
    cases = {
        "foreign.pth": "unknown key 'conv1.weight' for msma_lka",
        "strings.pth": "not a state dict of tensors: 'conv1.weight' holds a str",
        "cut.pth": "not a readable PyTorch checkpoint",
        "missing.pth": "no such checkpoint",
    }
    for name, problem in cases.items():
        out = tmp_path / f"{name}.ckpt"
        assert cli_main(["--network", "msma_lka", str(tmp_path / name), str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"msma convert: {tmp_path / name}: ") and problem in err, err
        assert not out.exists()
