"""`msma train` end to end on tiny synthetic settings: run folder contents (config, checkpoints, CSV, W&B offline
files, image grids, metrics.json), checkpoint reload, exact resume, and a checkpoint on Ctrl-C."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback

from msma.checkpoint import CONFIG_KEY, load_checkpoint_file, load_inference_model
from msma.config import compose_experiment
from msma.training.run import run_training

ROOT = Path(__file__).resolve().parents[2]


def tiny(cache: Path, *extra: str) -> list[str]:
    """Quickstart shrunk to seconds: 32 px, batches of 2, 4 training samples (2 steps per epoch)."""
    return [
        "num_threads=1",
        "logger=csv",
        "data.image_size=32",
        "data.num_workers=0",
        "data.batch_size=2",
        "data.num_samples=4",
        "data.val_samples=2",
        f"data.synthetic_cache_dir={cache}",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n=1",
        "trainer.limit_val_batches=1",
        "model.channels=[12,24,48]",
        *extra,
    ]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synthetic-cache")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    return env


@pytest.mark.slow
def test_cli_run_folder(cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = tiny(cache, "logger=default", "trainer.max_epochs=2", "trainer.grid_every_n=1", f"hydra.run.dir={run}")
    proc = subprocess.run(
        [sys.executable, "-m", "msma.cli", "train", "--config-name", "quickstart", *args],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "landmark NME" in proc.stdout
    # Resolved config, checkpoints, CSV log.
    assert "name: quickstart" in (run / "config.yaml").read_text()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    best = sorted((run / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1
    csv_text = (run / "csv" / "metrics.csv").read_text()
    assert "val/nme" in csv_text and "train/loss" in csv_text
    # W&B offline run files.
    offline = list((run / "wandb").glob("offline-run-*"))
    assert offline and any(p.suffix == ".wandb" for p in offline[0].iterdir())
    # Image grids: training (every step) and validation (every epoch), 3 panels wide.
    train_grids = sorted((run / "grids").glob("train_step*.png"))
    val_grids = sorted((run / "grids").glob("val_step*.png"))
    assert len(train_grids) >= 3 and len(val_grids) == 2
    from PIL import Image

    with Image.open(val_grids[0]) as im:
        assert im.size == (3 * 32, 2 * 32)
    # Final held-out evaluation.
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("trained", "untrained_mean_face"):
        assert math.isfinite(metrics[key]["nme"]) and math.isfinite(metrics[key]["vertex_posed_mm"])
    assert metrics["global_step"] == 4 and metrics["samples"] == 2
    # The checkpoint holds the resolved config and reloads into an equivalent module.
    ckpt = load_checkpoint_file(best[0])
    assert ckpt[CONFIG_KEY]["name"] == "quickstart" and ckpt[CONFIG_KEY]["data"]["image_size"] == 32
    assert all(k.startswith("encoder.") for k in ckpt["state_dict"])
    module = load_inference_model(best[0])
    for key, value in ckpt["state_dict"].items():
        assert torch.equal(module.state_dict()[key], value)


def test_bad_checkpoint_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.ckpt"):
        load_inference_model(bad)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_inference_model(tmp_path / "missing.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(ValueError, match="not written by msma train"):
        load_inference_model(tmp_path / "foreign.ckpt")


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [(), ("optim.ema_decay=0.5",)], ids=["plain", "ema"])
def test_resume_continues_exactly(cache: Path, tmp_path: Path, recipe: tuple[str, ...]) -> None:
    # Shuffled data, 2 steps per epoch. Uninterrupted: 2 epochs. Interrupted: 1 epoch, then resume to 2. With the
    # weight average, the training losses follow the raw weights: they match only if the resume restores them.
    common = tiny(cache, "trainer.grid_every_n=0", "final_eval=false", *recipe)
    full = run_training(compose_experiment("quickstart", [*common, "trainer.max_epochs=2"]), tmp_path / "full")
    first = run_training(compose_experiment("quickstart", [*common, "trainer.max_epochs=1"]), tmp_path / "first")
    assert len(full.train_losses) == 4 and len(first.train_losses) == 2
    assert first.train_losses == pytest.approx(full.train_losses[:2], rel=1e-6)
    resumed = run_training(
        compose_experiment("quickstart", [*common, "trainer.max_epochs=2", f"resume={first.last_checkpoint}"]),
        tmp_path / "resumed",
    )
    assert len(resumed.train_losses) == 2
    assert resumed.train_losses == pytest.approx(full.train_losses[2:], rel=1e-5)
    a = load_checkpoint_file(full.last_checkpoint)
    b = load_checkpoint_file(resumed.last_checkpoint)
    assert a["global_step"] == b["global_step"] == 4
    for key, value in a["state_dict"].items():
        assert torch.allclose(value.float(), b["state_dict"][key].float(), atol=1e-5), key
    if recipe:
        assert a["msma_ema"]["n_averaged"] == b["msma_ema"]["n_averaged"] == 4
        for key, value in a["msma_ema"]["raw"].items():
            assert torch.allclose(value.float(), b["msma_ema"]["raw"][key].float(), atol=1e-5), key


def test_missing_resume_file_is_reported(cache: Path, tmp_path: Path) -> None:
    cfg = compose_experiment("quickstart", tiny(cache, f"resume={tmp_path / 'nope.ckpt'}"))
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        run_training(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_unreadable_resume_file_is_reported_before_any_work(cache: Path, tmp_path: Path) -> None:
    """A truncated checkpoint (a copy cut short) and a foreign one: named with the problem, no run folder made."""
    good = {"state_dict": {}, "msma_config": {}}
    torch.save(good, tmp_path / "whole.ckpt")
    data = (tmp_path / "whole.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    torch.save({"model": {}}, tmp_path / "foreign.ckpt")
    for name, problem in (("cut", "not a readable PyTorch checkpoint"), ("foreign", "not a Lightning checkpoint")):
        cfg = compose_experiment("quickstart", tiny(cache, f"resume={tmp_path / name}.ckpt"))
        with pytest.raises(ValueError, match=rf"resume=.*{name}\.ckpt: cannot continue from it .*{problem}"):
            run_training(cfg, tmp_path / f"run_{name}")
        assert not (tmp_path / f"run_{name}").exists()


@pytest.mark.slow
def test_ctrl_c_writes_a_checkpoint(cache: Path, tmp_path: Path) -> None:
    from lightning.pytorch import Callback

    class CtrlC(Callback):
        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            if trainer.global_step == 3:
                raise KeyboardInterrupt

    cfg = compose_experiment("quickstart", tiny(cache, "trainer.max_epochs=5", "trainer.grid_every_n=0"))
    result = run_training(cfg, tmp_path / "run", extra_callbacks=[CtrlC()])
    assert result.interrupted
    saved = tmp_path / "run" / "checkpoints" / "interrupted.ckpt"
    ckpt = load_checkpoint_file(saved)
    assert ckpt["global_step"] == 3
    # ... and training continues from it.
    cont = run_training(
        compose_experiment("quickstart", tiny(cache, "trainer.max_epochs=3", "final_eval=false", f"resume={saved}")),
        tmp_path / "cont",
    )
    assert not cont.interrupted and load_checkpoint_file(cont.last_checkpoint)["global_step"] == 6


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_exits_cleanly(cache: Path, tmp_path: Path) -> None:
    import signal
    import time

    run = tmp_path / "run"
    args = tiny(cache, "trainer.max_epochs=10000", "trainer.grid_every_n=0", f"hydra.run.dir={run}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "msma.train", "--config-name", "quickstart", *args],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (run / "checkpoints" / "last.ckpt").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out[-3000:]
    ckpt = load_checkpoint_file(run / "checkpoints" / "interrupted.ckpt")
    assert ckpt["global_step"] >= 2
    assert "resume=" in out


@pytest.mark.slow
def test_cosine_schedule_and_weight_average(cache: Path, tmp_path: Path) -> None:
    # 2 epochs of 2 steps: the logged learning rate follows lr (1 + cos(pi k / 4)) / 2, and the checkpoint holds the
    # exponential average of the raw weights (decay 0.5, first update = copy: avg_4 = w4/2 + w3/4 + w2/8 + w1/8).
    lr = 1e-3
    cfg = compose_experiment(
        "quickstart",
        tiny(
            cache,
            "trainer.grid_every_n=0",
            "final_eval=false",
            "trainer.max_epochs=2",
            f"optim.lr={lr}",
            "optim.scheduler=cosine",
            "optim.ema_decay=0.5",
        ),
    )
    snapshots: list[dict[str, torch.Tensor]] = []

    class Snap(Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            snapshots.append({k: v.detach().clone() for k, v in pl_module.encoder.state_dict().items()})

    result = run_training(cfg, tmp_path / "run", extra_callbacks=[Snap()])
    rows = list(csv.DictReader((result.run_dir / "csv" / "metrics.csv").open()))
    logged = [float(r["lr-Adam"]) for r in rows if r.get("lr-Adam")]
    assert logged == pytest.approx([lr * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)], rel=1e-6)
    assert len(snapshots) == 4
    saved = load_checkpoint_file(result.last_checkpoint)
    weights = (1 / 8, 1 / 8, 1 / 4, 1 / 2)
    name = next(k for k, v in snapshots[0].items() if v.is_floating_point() and "weight" in k)
    expected = sum(w * s[name] for w, s in zip(weights, snapshots, strict=True))
    assert torch.allclose(saved["state_dict"]["encoder." + name], expected, atol=1e-6)
    assert torch.allclose(saved["msma_ema"]["raw"][name], snapshots[-1][name])
    assert not torch.allclose(expected, snapshots[-1][name])
