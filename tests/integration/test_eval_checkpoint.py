"""``msma eval`` and ``msma reconstruct`` on a real (tiny) checkpoint written by ``msma train``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from msma.config import compose_experiment
    from msma.training.run import run_training

    tmp = tmp_path_factory.mktemp("tiny-run")
    overrides = [
        "num_threads=1",
        "logger=csv",
        "data.image_size=32",
        "data.batch_size=2",
        "data.num_samples=4",
        "data.val_samples=2",
        f"data.synthetic_cache_dir={tmp / 'cache'}",
        "trainer.enable_progress_bar=false",
        "trainer.limit_val_batches=1",
        "trainer.max_epochs=1",
        "final_eval=false",
        "model.channels=[12,24,48]",
    ]
    result = run_training(compose_experiment("quickstart", overrides), tmp / "run")
    assert result.last_checkpoint
    return Path(result.last_checkpoint)


def test_eval_synthetic_writes_json_next_to_checkpoint(checkpoint: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from msma.cli.eval import cli_main

    cache = checkpoint.parents[2] / "cache"
    code = cli_main(["--ckpt", str(checkpoint), "--data", "synthetic", "--num-samples", "2", "--root", str(cache)])
    assert code == 0
    report_path = checkpoint.parent / f"eval_{checkpoint.stem}_synthetic.json"
    report = json.loads(report_path.read_text())
    assert report["result"]["count"] == 2
    assert report["result"]["protocol"]["image_size"] == 32  # the checkpoint's training size
    assert str(report_path) in capsys.readouterr().out


def test_reconstruct_with_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    from skimage import data

    from msma.cli.reconstruct import cli_main
    from msma.inference import Reconstructor

    rec = Reconstructor(checkpoint, renderer_backend="torch")
    assert rec.image_size == 32
    photo = np.asarray(data.astronaut())
    r = rec.reconstruct(photo)
    assert r.crop.shape == (3, 32, 32) and r.overlay.shape == photo.shape
    assert np.isfinite(r.landmarks).all() and r.render_mask.max() > 0.5
    Image.fromarray(photo).save(tmp_path / "astronaut.jpg")
    assert cli_main(["--ckpt", str(checkpoint), str(tmp_path / "astronaut.jpg"), "--out", str(tmp_path / "o")]) == 0
    mesh = trimesh.load(tmp_path / "o" / "astronaut.obj", process=False, maintain_order=True)
    assert len(mesh.vertices) == rec.face_model.n_vertices
    assert cli_main(["--ckpt", str(tmp_path / "nope.ckpt"), str(tmp_path / "astronaut.jpg")]) == 2
