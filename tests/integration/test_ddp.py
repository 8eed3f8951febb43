"""Two-process DDP on CPU (gloo) through the real CLI: both ranks train 2 steps, rank 0 alone writes files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from msma.checkpoint import load_checkpoint_file


@pytest.mark.slow
def test_two_process_gloo_ddp(tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = dict(os.environ)
    env.update({"WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    args = [
        "--config-name",
        "quickstart",
        "trainer=ddp_cpu",
        "logger=csv",
        "num_threads=1",
        "data.image_size=32",
        "data.num_workers=0",
        "data.batch_size=2",
        "data.num_samples=8",
        "data.val_samples=4",
        f"data.synthetic_cache_dir={tmp_path / 'cache'}",
        "model.channels=[12,24,48]",
        "trainer.max_steps=2",
        "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false",
        "trainer.grid_every_n=1",
        f"hydra.run.dir={run}",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "msma.train", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert (
        "distributed_backend=gloo" in out and "All distributed processes registered. Starting with 2 processes" in out
    )
    ckpt = load_checkpoint_file(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    # Rank-zero-only writes: one config, one CSV log, one set of grids, one metrics file.
    assert (run / "config.yaml").is_file() and (run / "metrics.json").is_file()
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 2
    assert len(list(run.rglob("metrics.csv"))) == 1
    assert sorted(p.name for p in (run / "grids").glob("train_step*.png")) == [
        "train_step0000001.png",
        "train_step0000002.png",
    ]
