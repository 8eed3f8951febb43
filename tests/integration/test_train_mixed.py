"""Mixed-source training end to end: `make train EXP=embedded_mixed` (synthetic faces + the real test photos),
exact resume, and two gloo processes drawing disjoint shares of a mixed epoch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from msma.checkpoint import load_checkpoint_file
from msma.config import compose_experiment
from msma.training.run import run_training

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _tiny(cache: Path, photos: Path) -> list[str]:
    return [
        "num_threads=1",
        "logger=csv",
        "data.image_size=32",
        "data.num_workers=0",
        "data.persistent_workers=false",
        "data.batch_size=2",
        "data.num_samples=4",
        "data.val_samples=2",
        f"data.synthetic_cache_dir={cache}",
        f"data.sources.1.root={photos}",
        "data.sources.1.landmarks=gt",  # the test photos' own 68 points (.pts): no detector in the tests
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n=1",
        "trainer.limit_val_batches=1",
        "model.channels=[12,24,48]",
    ]


def test_make_train_embedded_mixed(testdata: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    venv = Path(sys.prefix)
    env = dict(os.environ)
    env.update(
        {
            "WANDB_MODE": "offline",
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "MSMA_DATA_ROOT": str(testdata / "faces68"),
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]),
        }
    )
    # The experiment's own labels: MediaPipe (its model from the asset mirror), 68 points + 478 dense points per
    # photo, labelled once into a fresh cache; the dense-landmark term is on in the experiment.
    tiny = [a for a in _tiny(tmp_path / "cache", testdata / "faces68") if not a.startswith("data.sources.1.")]
    args = [
        *tiny,
        f"data.cache_dir={tmp_path / 'labels'}",
        "trainer.max_epochs=1",
        "trainer.grid_every_n=0",
        "final_eval=false",
        f"hydra.run.dir={run}",
    ]
    # -o: never rebuild the virtualenv from the test (its setup stamp is taken as up to date).
    cmd = ["make", "-o", str(venv / ".msma-setup-done"), "train", "EXP=embedded_mixed", f"VENV={venv}",
           f"ARGS={' '.join(args)}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    csv_text = (run / "csv" / "metrics.csv").read_text()
    header = csv_text.splitlines()[0].split(",")
    # Each term per source: landmarks from both, coefficients from the synthetic faces only, dense landmarks from
    # the photos only.
    keys = ("train/lm/synthetic", "train/lm/photos", "train/param/synthetic", "train/color/photos", "train/n_lm",
            "train/dense", "train/dense/photos", "train/n_dense")  # fmt: skip
    for key in keys:
        assert key in header, key
    assert "train/param/photos" not in header and "train/dense/synthetic" not in header
    rows = [dict(zip(header, line.split(","))) for line in csv_text.splitlines()[1:]]
    dense_rows = [float(r["train/dense/photos"]) for r in rows if r.get("train/dense/photos")]
    assert dense_rows and all(v > 0 and v == v for v in dense_rows)  # finite, positive: the term is active
    assert max(float(r["train/n_dense"]) for r in rows if r.get("train/n_dense")) >= 1
    # 4 synthetic + 2 training photos (one of 3 held out), half of the epoch from each: 6 samples, 3 steps.
    assert load_checkpoint_file(run / "checkpoints" / "last.ckpt")["global_step"] == 3


def test_mixed_resume_continues_exactly(testdata: Path, tmp_path: Path) -> None:
    common = [*_tiny(tmp_path / "cache", testdata / "faces68"), "trainer.grid_every_n=0", "final_eval=false"]
    full = run_training(compose_experiment("embedded_mixed", [*common, "trainer.max_epochs=2"]), tmp_path / "full")
    first = run_training(compose_experiment("embedded_mixed", [*common, "trainer.max_epochs=1"]), tmp_path / "first")
    assert len(full.train_losses) == 6 and len(first.train_losses) == 3
    resumed = run_training(
        compose_experiment("embedded_mixed", [*common, "trainer.max_epochs=2", f"resume={first.last_checkpoint}"]),
        tmp_path / "resumed",
    )
    assert len(resumed.train_losses) == 3
    assert resumed.train_losses == pytest.approx(full.train_losses[3:], rel=1e-5)


def test_a_photo_that_breaks_is_replaced_in_training_and_counted(testdata: Path, tmp_path: Path) -> None:
    """A 300W-LP source (photos decoded only when loaded) with a truncated photo: training goes on with its stand-in
    and counts it (train/load_failures; validation leaving stand-ins out: tests/unit/test_module.py)."""
    import shutil

    lp = tmp_path / "300w_lp" / "IBUG"
    lp.mkdir(parents=True)
    src = testdata / "300w_lp" / "IBUG_image_008_1_0"
    for i in range(4):
        shutil.copy(src.with_suffix(".mat"), lp / f"IBUG_image_008_1_{i}.mat")
        shutil.copy(src.with_suffix(".jpg"), lp / f"IBUG_image_008_1_{i}.jpg")
    (lp / "IBUG_image_008_1_1.jpg").write_bytes(src.with_suffix(".jpg").read_bytes()[:3000])
    args = [
        *_tiny(tmp_path / "cache", tmp_path / "300w_lp"),
        "data.sources.1.kind=300w_lp",
        "data.val_fraction=0.25",
        "trainer.max_epochs=1",
        "trainer.grid_every_n=0",
        "final_eval=false",
    ]
    result = run_training(compose_experiment("embedded_mixed", args), tmp_path / "run")
    assert not result.interrupted
    csv_text = (tmp_path / "run" / "csv" / "metrics.csv").read_text()
    header = csv_text.splitlines()[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in csv_text.splitlines()[1:]]
    failures = [float(r["train/load_failures"]) for r in rows if r.get("train/load_failures")]
    assert failures and sum(failures) >= 1  # the truncated photo (in the training split) was drawn and counted


def _worker(rank: int, init_file: str, photos: str, lp: str, out_dir: str) -> None:
    from torch.utils.data import DistributedSampler

    from msma.data.config import DataConfig, SourceConfig
    from msma.data.datamodule import FaceDataModule

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        cfg = DataConfig(
            image_size=32,
            batch_size=1,
            num_workers=0,
            augment=False,
            val_fraction=0.0,
            sources=[
                SourceConfig(kind="folder", root=photos, landmarks="gt"),
                SourceConfig(kind="300w_lp", root=lp),
                SourceConfig(kind="aflw2000_3d", root=str(Path(lp).parent / "aflw2000_3d")),
            ],
        )
        dm = FaceDataModule(cfg)
        if rank == 0:
            dm.prepare_data()
        dist.barrier()
        dm.setup("fit")
        loader = dm.train_dataloader()
        # Lightning keeps a DistributedSampler (it wraps any other sampler in its own).
        assert isinstance(loader.sampler, DistributedSampler)
        seen = {}
        for epoch in (0, 1):
            loader.sampler.set_epoch(epoch)
            seen[epoch] = [s for batch in loader for s in batch.source]
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(seen))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_see_disjoint_samples(testdata: Path, tmp_path: Path) -> None:
    mp.spawn(
        _worker,
        args=(str(tmp_path / "init"), str(testdata / "faces68"), str(testdata / "300w_lp"), str(tmp_path)),
        nprocs=2,
        join=True,
    )
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for epoch in ("0", "1"):
        a, b = ranks[0][epoch], ranks[1][epoch]
        # 3 photos + 1 300W-LP + 2 AFLW2000-3D = 6 samples: 3 per rank, none on both.
        assert len(a) == len(b) == 3
        assert not set(a) & set(b)
        assert len(set(a) | set(b)) == 6
    assert ranks[0]["0"] != ranks[0]["1"]  # a new order each epoch


def test_mixed_run_under_lightning_ddp_splits_the_epoch(testdata: Path, tmp_path: Path) -> None:
    """Two gloo processes through the real CLI: 8 synthetic + 2 training photos, half of the 10-sample epoch from
    each source, 5 per rank, batches of 2 -> 2 steps (10 samples on each rank, i.e. no split, would be 5 steps)."""
    run = tmp_path / "run"
    env = dict(os.environ)
    env.update({"WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    args = [
        *_tiny(tmp_path / "cache", testdata / "faces68"),
        "data.num_samples=8",
        "trainer=ddp_cpu",
        "trainer.max_epochs=1",
        "trainer.grid_every_n=0",
        "final_eval=false",
        f"hydra.run.dir={run}",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "msma.train", "--config-name", "embedded_mixed", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "Starting with 2 processes" in out
    assert load_checkpoint_file(run / "checkpoints" / "last.ckpt")["global_step"] == 2
