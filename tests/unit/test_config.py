"""Hydra experiment configs: every experiment composes against the schema; typos and wrong types fail early."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from msma.config import (
    ExperimentConfig,
    compose_experiment,
    experiments_dir,
    from_container,
    list_experiments,
    to_container,
)
from msma.training.trainer import resolve_wandb_mode

REQUIRED = {
    "quickstart",
    "embedded",
    "msma_lka",
    "mlanet",
    "deep3d_r50",
    "msma_no_attention",
    "msma_no_fusion",
    "msma_pooled_attention",
    "msma_single_scale",
    "msma_spatial",
}


def test_required_experiments_exist() -> None:
    assert REQUIRED <= set(list_experiments())
    assert "_base" not in list_experiments()


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_every_experiment_composes(name: str) -> None:
    cfg = compose_experiment(name)
    assert cfg.name == name
    # Typed all the way down: the composed tree is the ExperimentConfig schema.
    assert OmegaConf.get_type(cfg) is ExperimentConfig
    plain = to_container(cfg)
    assert plain["optim"]["lr"] > 0
    assert from_container(plain) == cfg


def test_paper_settings() -> None:
    cfg = compose_experiment("msma_lka")
    assert cfg.model.name == "msma_lka" and cfg.model.backbone == "resnet50"
    assert cfg.data.image_size == 224 and cfg.data.batch_size == 32
    assert cfg.trainer.max_epochs == 40
    assert cfg.optim.lr == pytest.approx(1e-4) and cfg.optim.gamma == pytest.approx(0.2) and cfg.optim.step_size == 10
    assert cfg.loss.w_color == pytest.approx(1.5) and cfg.loss.w_lm == pytest.approx(0.01)
    # the authors' setting: BFM, photos, ArcFace r50 identity loss, Deep3D's augmentation, fp32, no supervision
    for name, w_feat in (("msma_lka", 0.35), ("mlanet", 0.35), ("deep3d_r50", 0.2)):
        paper = compose_experiment(name)
        assert paper.face_model.name == "bfm" and paper.data.kind == "folder" and paper.model.name == name
        assert (
            paper.loss.use_identity and paper.loss.identity_arch == "r50" and paper.loss.w_feat == pytest.approx(w_feat)
        )
        assert paper.loss.w_param == 0.0 and paper.trainer.precision == "32-true"
        assert paper.data.augment and paper.data.flip and not paper.data.color_jitter and not paper.data.blur
        assert paper.model.pretrained and paper.data.batch_size == 32 and paper.optim.lr == pytest.approx(1e-4)
        embedded = compose_experiment(name, ["+preset=embedded"])
        assert embedded.face_model.name == "ict" and embedded.data.kind == "synthetic"
        assert embedded.trainer.accelerator == "cpu" and not embedded.loss.use_identity and embedded.loss.w_param == 1.0
        assert embedded.model.name == name and embedded.optim == paper.optim
    assert compose_experiment("quickstart").model.name == "msma_spatial"
    # RandConv: on in the embedded CPU recipe only (the paper settings and the quickstart keep Deep3D's input)
    assert compose_experiment("embedded").data.randconv == pytest.approx(0.5)
    assert compose_experiment("quickstart").data.randconv == 0.0 and paper.data.randconv == 0.0
    d3d = compose_experiment("deep3d_r50")
    assert (
        d3d.trainer.max_epochs == 20
        and d3d.loss.w_color == pytest.approx(1.92)
        and d3d.loss.w_lm == pytest.approx(1.6e-3)
    )
    assert compose_experiment("msma_no_attention").model.attention == "none"
    assert compose_experiment("msma_no_fusion").model.fusion is False
    assert compose_experiment("msma_pooled_attention").model.attention_on_pooled is True
    assert compose_experiment("msma_single_scale").model.single_scale is True


def test_overrides_apply() -> None:
    cfg = compose_experiment("quickstart", ["trainer.max_steps=7", "model.backbone=resnet34", "trainer=ddp_cpu"])
    assert cfg.trainer.max_steps == 7 and cfg.model.backbone == "resnet34"
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.process_group_backend == "gloo" and cfg.trainer.devices == 2


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("model.backbon=resnet18", "model.backbon"),
        ("trainer.max_stepz=3", "trainer.max_stepz"),
    ],
)
def test_misspelled_override_fails_at_compose(override: str, needle: str) -> None:
    with pytest.raises(ConfigCompositionException) as err:
        compose_experiment("quickstart", [override])
    assert needle in str(err.value) + str(err.value.__cause__)


def test_force_added_key_is_rejected_too() -> None:
    # Hydra's `+key=value` opens the typed node; the schema re-check still refuses the misspelled key.
    with pytest.raises(ValueError, match="w_colour"):
        compose_experiment("quickstart", ["+loss.w_colour=1.0"])


@pytest.mark.parametrize(
    ("override", "needle"),
    [("trainer.max_steps=abc", "max_steps"), ("loss.w_lm=heavy", "w_lm"), ("model.fusion=maybe", "fusion")],
)
def test_wrong_type_fails_at_compose(override: str, needle: str) -> None:
    with pytest.raises(ConfigCompositionException) as err:
        compose_experiment("quickstart", [override])
    text = str(err.value) + " " + str(err.value.__cause__)
    assert needle in text


def test_misspelled_key_in_a_file_fails(tmp_path: Path) -> None:
    root = tmp_path / "experiments"
    shutil.copytree(experiments_dir(), root, ignore=shutil.ignore_patterns("local", "sweeps"))
    (root / "typo.yaml").write_text("defaults:\n  - _base\n  - _self_\nname: typo\ntrainer:\n  max_epoch: 3\n")
    with pytest.raises((ConfigCompositionException, ConfigKeyError, ValidationError)) as err:
        compose_experiment("typo", root=root)
    assert "max_epoch" in str(err.value) + str(err.value.__cause__)
    (root / "badtype.yaml").write_text("defaults:\n  - _base\n  - _self_\nname: badtype\noptim:\n  lr: fast\n")
    with pytest.raises((ConfigCompositionException, ValidationError)) as err2:
        compose_experiment("badtype", root=root)
    assert "lr" in str(err2.value) + str(err2.value.__cause__)


def test_checkpoint_config_with_unknown_key_is_rejected() -> None:
    plain = to_container(compose_experiment("quickstart"))
    plain["trainer"]["bogus"] = 1
    with pytest.raises(ConfigKeyError, match="bogus"):
        from_container(plain)


def test_wandb_mode_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_wandb_mode(None) == "offline"
    assert resolve_wandb_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode(None) == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_wandb_mode(None) == "offline"
    with pytest.raises(ValueError, match="logger.wandb.mode"):
        resolve_wandb_mode("sometimes")
