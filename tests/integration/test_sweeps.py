"""Every W&B sweep file, simulated offline: the agent's commands (wandb's own formatting of
``${args_no_hyphens}``) run ``msma train --config-name <experiment>``, every parameter set composes against the
typed schema, and a few of them train one step."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from msma.config import compose_experiment, list_experiments
from msma.sweep import SweepConfigError, agent_command, agent_commands, hydra_overrides, load_sweep, sample_parameters
from msma.training.run import run_training

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = sorted((ROOT / "experiments" / "sweeps").glob("*.yaml"))
#: Parameter sets per sweep file that train one step (grid: first, middle and last point; bayes: 3 draws).
TRAINED_PER_FILE = 3


def tiny_overrides(cache: Path, sweep_keys: set[str]) -> list[str]:
    """One CPU step on 2 synthetic faces at 32 px; the backbone shrinks unless the sweep chooses the encoder."""
    out = [
        "+preset=embedded",  # the paper experiments' inputs (BFM, photos, weights) are not on a test machine
        "trainer=cpu",
        "renderer=torch",
        "logger=csv",
        "num_threads=1",
        "model.pretrained=false",
        "data=synthetic",
        "data.image_size=32",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.pin_memory=false",
        "data.persistent_workers=false",
        "data.num_samples=2",
        "data.val_samples=2",
        "data.augment=false",
        f"data.synthetic_cache_dir={cache}",
        "trainer.max_steps=1",
        "trainer.max_epochs=1",
        "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false",
        "trainer.grid_every_n=0",
        "final_eval=false",
    ]
    if "model.backbone" not in sweep_keys:
        out.append("model.backbone=resnet18")
    if not {"model.channels", "model"} & sweep_keys:
        out.append("model.channels=[12,24,48]")
    return out


def _spread(items: list[list[str]], k: int) -> list[list[str]]:
    """``k`` items spread over the list (first, ..., last)."""
    if len(items) <= k:
        return items
    idx = sorted({round(i * (len(items) - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]
    return [items[i] for i in idx]


def _all_commands(path: Path) -> list[list[str]]:
    """Every grid point, or 8 random/bayes draws."""
    sweep = load_sweep(path)
    count = 10_000 if sweep["method"] == "grid" else 8
    return [agent_command(sweep, p) for p in sample_parameters(sweep, count, seed=0)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synthetic-cache")


def test_there_are_bayes_and_grid_sweeps() -> None:
    methods = {load_sweep(p)["method"] for p in SWEEPS}
    assert {"bayes", "grid"} <= methods, f"sweep files {SWEEPS} have methods {methods}"


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_metric_and_command(path: Path) -> None:
    sweep = load_sweep(path)
    assert sweep["metric"] == {"name": "val/nme", "goal": "minimize"}
    commands = agent_commands(path, count=3)
    assert len(commands) == 3 or sweep["method"] == "grid"
    for cmd in commands:
        assert cmd[:2] == ["/usr/bin/env", "msma"] and cmd[2] == "train", cmd
        experiment, overrides = hydra_overrides(cmd)
        assert experiment in list_experiments()
        # One `key=value` argument per swept parameter, in the sweep file's order.
        assert [o.split("=", 1)[0] for o in overrides] == list(sweep["parameters"]), overrides


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_parameter_set_composes(path: Path, cache: Path) -> None:
    """Each override reaches the composed config with the sampled value (a type error or unknown key would raise)."""
    keys = set(load_sweep(path)["parameters"])
    for cmd in _all_commands(path):
        experiment, overrides = hydra_overrides(cmd)
        cfg = compose_experiment(experiment, overrides + tiny_overrides(cache, keys))
        for override in overrides:
            key, value = override.split("=", 1)
            if key == "model":  # a config group: the encoder it selects
                assert cfg.model.name == value
                continue
            node = cfg
            for part in key.split(".")[:-1]:
                node = node[part]
            got = node[key.split(".")[-1]]
            if isinstance(got, float):
                assert math.isclose(got, float(value), rel_tol=1e-12), (key, got, value)
            elif isinstance(got, bool):
                assert got == (value.lower() == "true"), (key, got, value)
            elif isinstance(got, int):
                assert got == int(value), (key, got, value)
            elif isinstance(got, str):
                assert got == value, (key, got, value)
            else:  # a list
                assert [int(v) for v in got] == [int(v) for v in value.strip("[]").split(",")], (key, got, value)


@pytest.mark.slow
@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sampled_parameter_sets_train_one_step(path: Path, cache: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    keys = set(load_sweep(path)["parameters"])
    for i, cmd in enumerate(_spread(_all_commands(path), TRAINED_PER_FILE)):
        experiment, overrides = hydra_overrides(cmd)
        cfg = compose_experiment(experiment, overrides + tiny_overrides(cache, keys))
        run = tmp_path / f"trial{i}"
        result = run_training(cfg, run)
        assert len(result.train_losses) == 1 and math.isfinite(result.train_losses[0]), (cmd, result.train_losses)
        assert Path(result.last_checkpoint).is_file()
        stored = (run / "config.yaml").read_text()
        for override in overrides:
            key, value = override.split("=", 1)
            if key == "model":
                assert f"name: {value}" in stored
            else:
                assert key.split(".")[-1] + ":" in stored


def test_misspelled_sweep_key_fails_at_compose(tmp_path: Path, cache: Path) -> None:
    bad = tmp_path / "typo.yaml"
    bad.write_text(
        "program: msma\nmethod: grid\nmetric: {name: val/nme, goal: minimize}\n"
        "parameters:\n  optim.learning_rate:\n    values: [1.0e-4]\n"
        "command:\n  - ${env}\n  - msma\n  - train\n  - --config-name\n  - msma_lka\n  - ${args_no_hyphens}\n"
    )
    (cmd,) = agent_commands(bad, count=5)
    experiment, overrides = hydra_overrides(cmd)
    assert overrides == ["optim.learning_rate=0.0001"]
    with pytest.raises(Exception, match="learning_rate"):
        compose_experiment(experiment, overrides + tiny_overrides(cache, set()))


def test_wrong_type_fails_at_compose(cache: Path) -> None:
    with pytest.raises(Exception, match="lka_dilated_kernel"):
        compose_experiment("msma_lka", ["model.lka_dilated_kernel=big", *tiny_overrides(cache, set())])


def test_command_without_train_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "notrain.yaml"
    bad.write_text(
        "method: random\nparameters:\n  optim.lr: {values: [1.0e-4]}\n"
        "command:\n  - ${env}\n  - python\n  - -c\n  - pass\n  - ${args_no_hyphens}\n"
    )
    (cmd,) = agent_commands(bad, count=1)
    with pytest.raises(SweepConfigError, match="msma train"):
        hydra_overrides(cmd)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_dry_run_prints_the_agent_commands(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from msma.sweep import main

    assert main([str(path), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == min(3, len(_all_commands(path)))
    experiment = "msma_spatial" if path.stem in ("attention_grid", "kernel_grid") else "msma_lka"
    assert all(line.startswith(f"/usr/bin/env msma train --config-name {experiment} ") for line in lines)


def test_make_sweep_without_wandb_explains(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from msma.sweep import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main([str(SWEEPS[0])]) == 2
    err = capsys.readouterr().err
    assert "W&B is not reachable" in err and "--dry-run" in err
