"""``msma info`` (parameters, FLOPs, layout, missing inputs), the preflight of missing inputs, and old checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from msma.cli.info import cli_main
from msma.config import compose_experiment, to_container
from msma.info import count_flops, experiment_info
from msma.preflight import MissingInputsError, check_inputs, missing_inputs


@pytest.fixture()
def bare_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No BFM, no photos, no cached ImageNet or ArcFace weights, offline."""
    for var in ("MSMA_BFM_DIR", "MSMA_DATA_ROOT", "MSMA_RESNET50_WEIGHTS", "MSMA_ARCFACE_WEIGHTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


@pytest.mark.parametrize(
    ("name", "params"), [("msma_lka", 105_732_397), ("mlanet", 32_458_121), ("deep3d_r50", 24_034_625)]
)
def test_info_json_params_of_the_paper_experiments(
    name: str, params: int, bare_machine: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """The BFM layout's counts without BFM files; every missing input listed."""
    assert cli_main(["--config-name", name, "--json", "--no-flops"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == params and isinstance(info["params"], int)
    assert sum(info["params_by_part"].values()) == params and "other" not in info["params_by_part"]
    assert info["layout"] == {"id": 80, "exp": 64, "tex": 80, "angles": 3, "sh": 27, "trans": 3, "total": 257}
    assert info["face_model"] == "bfm" and info["data"]["kind"] == "folder" and info["precision"] == "32-true"
    assert info["input"] == "[0, 1] RGB"
    assert [m["what"] for m in info["missing"]] == [
        "BFM face model",
        "training photos",
        "ImageNet weights (resnet50)",
        "ArcFace weights",
    ]


def test_info_parts_and_flops() -> None:
    cfg = compose_experiment("msma_lka", ["+preset=embedded", "data.image_size=64", "model.backbone=resnet18"])
    info = experiment_info(cfg)
    assert set(info["params_by_part"]) == {"backbone", "fusion", "projection", "attention", "heads"}
    assert info["face_model"] == "ict" and info["missing"] == []
    # FLOPs on the meta device equal FLOPs of a real forward
    from torch.utils.flop_counter import FlopCounterMode

    from msma.models import build_encoder

    enc = build_encoder("mlanet", __import__("msma.info").info.layout_of("ict"), backbone="resnet18").eval()
    with FlopCounterMode(display=False) as real, torch.no_grad():
        enc(torch.rand(1, 3, 64, 64))
    assert count_flops(enc, 64) == real.get_total_flops() > 0
    mlanet = experiment_info(compose_experiment("mlanet", ["+preset=embedded", "model.backbone=resnet18"]), flops=False)
    assert mlanet["params_by_part"]["attention"] > 0  # coordinate attention inside the backbone


def test_preflight_lists_everything_and_training_stops_first(bare_machine: None, tmp_path: Path) -> None:
    from msma.training.run import run_training

    cfg = compose_experiment("msma_lka")
    assert len(missing_inputs(cfg)) == 4
    with pytest.raises(MissingInputsError) as err:
        run_training(cfg, tmp_path / "run")
    text = str(err.value)
    for needle in (
        "MSMA_BFM_DIR",
        "MSMA_DATA_ROOT",
        "resnet50-0676ba61.pth",
        "MSMA_ARCFACE_WEIGHTS",
        "+preset=embedded",
    ):
        assert needle in text
    assert not (tmp_path / "run").exists()  # no work done
    check_inputs(compose_experiment("msma_lka", ["+preset=embedded"]))  # nothing missing on the embedded default


def test_preflight_accepts_present_inputs(bare_machine: None, tmp_path: Path, synthetic_bfm_dir: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"\xff\xd8")
    weights = tmp_path / "r50.pth"
    weights.write_bytes(b"x")
    arcface = tmp_path / "backbone.pth"
    arcface.write_bytes(b"x")
    cfg = compose_experiment(
        "deep3d_r50",
        [
            f"face_model.path={synthetic_bfm_dir}",
            f"data.root={photos}",
            f"model.pretrained_path={weights}",
            f"loss.identity_weights={arcface}",
        ],
    )
    assert missing_inputs(cfg) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = compose_experiment(
        "deep3d_r50",
        [f"face_model.path={empty}", f"data.root={empty}", "model.pretrained=false", "loss.use_identity=false"],
    )
    assert [m.what for m in missing_inputs(cfg)] == ["BFM face model", "training photos"]


def test_old_variant_checkpoint_loads_under_its_new_name(tmp_path: Path) -> None:
    from msma.checkpoint import CONFIG_KEY, load_inference_model
    from msma.config import to_typed
    from msma.training.checkpoint import build_module

    cfg = compose_experiment(
        "msma_spatial", ["+preset=embedded", "model.backbone=resnet18", "model.channels=[12,24,48]"]
    )
    module = build_module(to_typed(cfg))
    old = to_container(cfg)
    old["model"]["name"] = "msma_lka"  # what the variant was called before
    state = {k: v for k, v in module.state_dict().items() if k.startswith("encoder.")}
    torch.save({"state_dict": state, CONFIG_KEY: old}, tmp_path / "old.ckpt")
    with pytest.warns(UserWarning, match="msma_spatial"):
        loaded = load_inference_model(tmp_path / "old.ckpt")
    assert type(loaded.encoder).__name__ == "MSMASpatialEncoder"


def test_info_names_an_unknown_experiment_or_bad_override(capsys: pytest.CaptureFixture[str]) -> None:
    """These ended with Hydra's traceback; now one line, exit 2, the known experiments listed."""
    assert cli_main(["--config-name", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("msma info: no experiment 'nope'; known: ") and "msma_lka" in err and "_base" not in err
    assert cli_main(["--config-name", "quickstart", "data.batch_size=abc"]) == 2
    assert (
        "msma info: quickstart data.batch_size=abc: Error merging override data.batch_size=abc (Value 'abc' of type"
        in (capsys.readouterr().err)
    )
    assert cli_main(["--config-name", "quickstart", "nokey=1"]) == 2
    err = capsys.readouterr().err
    assert "Could not override 'nokey'" in err and len(err.strip().splitlines()) == 1
    from msma.cli.prepare import cli_main as prepare_main  # the same composition for msma prepare --config-name

    assert prepare_main(["--config-name", "nope"]) == 2
    assert capsys.readouterr().err.startswith("msma prepare: no experiment 'nope'; known: ")
