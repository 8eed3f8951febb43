"""Acceptance tests of the layers above the core, on one tiny checkpoint written by ``msma train``:

* the end-of-training ``metrics.json``, the validation metrics of the same checkpoint (as logged during training,
  and from Lightning's validation loop run again on the checkpoint file) and ``msma eval --ckpt <ckpt> --data
  synthetic`` (no other option) report the same numbers under the same names;
* inference never builds a loss: a checkpoint whose stored configuration enables the identity loss with a
  face-recognition weights file that does not exist here is used by ``msma reconstruct`` and ``msma eval``;
* ``msma eval`` overrides and ``msma reconstruct`` / ``Reconstructor`` on the checkpoint.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from msma.checkpoint import CONFIG_KEY, load_checkpoint_file
from msma.config import compose_experiment, tiny_overrides
from msma.evaluation.heldout import METRIC_NAMES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two epochs on 4 synthetic faces; validation and the final report on all 4 validation faces."""
    from msma.training.run import run_training

    tmp = tmp_path_factory.mktemp("consistency")
    replaced = {"trainer.limit_val_batches", "final_eval", "data.val_samples", "trainer.max_steps"}
    overrides = [
        o for o in tiny_overrides(tmp / "cache", image_size=32, train_samples=4) if o.split("=")[0] not in replaced
    ]
    overrides += [
        "model.backbone=resnet18",
        "model.channels=[12,24,48]",
        "data.val_samples=4",
        "data.test_kind=null",  # the held-out split is then the validation split
        "trainer.max_steps=-1",
        "trainer.max_epochs=2",
        "final_eval=true",
    ]
    result = run_training(compose_experiment("quickstart", overrides), tmp / "runs" / "quickstart" / "r1")
    assert result.best_checkpoint and result.metrics
    return result.run_dir


def test_metrics_json_scores_the_labelled_photos(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """quickstart's photos_root "auto" ($MSMA_SHARED/testdata) puts the real-photo report into metrics.json, and
    `msma eval --data photos` with the checkpoint reproduces it."""
    from msma.cli.eval import cli_main

    photos = json.loads((tiny_run / "metrics.json").read_text())["photos"]
    assert photos["count"] == 6 and photos["protocol"]["image_size"] == 32  # image00251 through the fallback
    scored = [r for r in photos["images"] if "nme" in r]
    assert all(np.isfinite(r["nme"]) and np.isfinite(r["nme_mean_face"]) for r in scored)
    out = tiny_run / "photos.json"
    root = Path(photos["images"][0]["image"]).parents[1]
    assert cli_main(["--ckpt", str(_best(tiny_run)), "--data", "photos", "--root", str(root), "--out", str(out)]) == 0
    again = json.loads(out.read_text())["result"]
    assert again["mean"] == pytest.approx(photos["mean"], rel=1e-6)
    assert again["mean_mean_face"] == pytest.approx(photos["mean_mean_face"], rel=1e-6)
    assert "ratio to the mean face" in capsys.readouterr().out


def _best(run: Path) -> Path:
    (best,) = sorted((run / "checkpoints").glob("best-*.ckpt"))
    return best


def _validation_row(run: Path, epoch: int) -> dict[str, float]:
    """The validation scalars logged at the end of ``epoch`` (the epoch the best checkpoint was written at)."""
    with open(run / "csv" / "metrics.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("val/nme") and r["epoch"] and int(r["epoch"]) == epoch]
    assert len(rows) == 1, f"no single validation row for epoch {epoch}"
    return {k[len("val/") :]: float(v) for k, v in rows[0].items() if k.startswith("val/") and v != ""}


def _validate_checkpoint(run: Path, best: Path) -> dict[str, float]:
    from lightning.pytorch import Trainer

    from msma.config import experiment_from_dict
    from msma.data.datamodule import FaceDataModule
    from msma.training.checkpoint import load_training_module

    module = load_training_module(best)
    datamodule = FaceDataModule(experiment_from_dict(module.config).data, module.face_model)
    loader, split = datamodule.heldout_dataloader()
    assert split == "validation"
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    (logged,) = trainer.validate(module, dataloaders=loader, verbose=False)
    return {k[len("val/") :]: float(v) for k, v in logged.items() if k.startswith("val/")}


def test_metrics_json_validation_and_eval_agree(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from msma.cli.eval import cli_main

    best = _best(tiny_run)
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["weights"] == str(best) and metrics["split"] == "validation" and metrics["samples"] == 4
    report_json = metrics["trained"]
    assert set(report_json) == set(METRIC_NAMES)

    epoch = int(best.name.split("-")[1])  # best-<epoch>-<step>.ckpt
    validation = _validation_row(tiny_run, epoch)

    assert cli_main(["--ckpt", str(best), "--data", "synthetic"]) == 0
    assert "vertex_posed_mm" in capsys.readouterr().out
    report_eval = json.loads((best.parent / f"eval_{best.stem}_synthetic.json").read_text())["result"]
    assert report_eval["count"] == 4 and "validation split" in report_eval["protocol"]["split"]

    # The validation loop run afresh on the checkpoint file (Lightning's validate, the training module).
    revalidated = _validate_checkpoint(tiny_run, best)

    compared = []
    for name in METRIC_NAMES:
        a, c = float(report_json[name]), float(report_eval[name])
        if math.isnan(a):
            assert math.isnan(c) and name not in validation, name
            continue
        b, d = validation[name], revalidated[name]
        for x, y in ((a, b), (a, c), (a, d)):
            assert math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-6), (name, a, b, c, d)
        compared.append(name)
    # Synthetic data has every ground truth: all metrics were compared.
    assert compared == list(METRIC_NAMES)


def _with_missing_identity_weights(ckpt_path: Path, out: Path) -> Path:
    ckpt = load_checkpoint_file(ckpt_path)
    loss_cfg = dict(ckpt[CONFIG_KEY]["loss"])
    loss_cfg.update(use_identity=True, identity_weights=str(out.parent / "elsewhere" / "backbone.pth"))
    ckpt[CONFIG_KEY] = {**ckpt[CONFIG_KEY], "loss": loss_cfg}
    torch.save(ckpt, out)
    return out


def test_inference_never_builds_the_loss(tiny_run: Path, tmp_path: Path) -> None:
    from skimage import data

    from msma.cli.eval import cli_main as eval_main
    from msma.cli.reconstruct import cli_main as reconstruct_main
    from msma.training.checkpoint import load_training_module

    ckpt = _with_missing_identity_weights(_best(tiny_run), tmp_path / "identity.ckpt")
    # The training module (resume / fine-tuning) needs the loss, so it does fail: the file really is unusable
    # for anything that builds losses.
    with pytest.raises(FileNotFoundError, match="face-recognition weights not found"):
        load_training_module(ckpt)

    Image.fromarray(np.asarray(data.astronaut())).save(tmp_path / "photo.png")
    out = tmp_path / "recon"
    assert reconstruct_main(["--ckpt", str(ckpt), str(tmp_path / "photo.png"), "--out", str(out)]) == 0
    assert (out / "photo.obj").is_file() and (out / "photo_overlay.png").is_file()

    assert eval_main(["--ckpt", str(ckpt), "--data", "synthetic", "--out", str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())["result"]
    expected = json.loads((tiny_run / "metrics.json").read_text())["trained"]
    assert result["nme"] == pytest.approx(expected["nme"], rel=1e-6)


def test_eval_synthetic_writes_json_next_to_checkpoint(tiny_run: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from msma.cli.eval import cli_main

    checkpoint = _best(tiny_run)
    cache = tiny_run.parents[2] / "cache"
    code = cli_main(["--ckpt", str(checkpoint), "--data", "synthetic", "--num-samples", "2", "--root", str(cache)])
    assert code == 0
    report_path = checkpoint.parent / f"eval_{checkpoint.stem}_synthetic.json"
    report = json.loads(report_path.read_text())
    assert report["result"]["count"] == 2
    assert report["result"]["protocol"]["image_size"] == 32  # the checkpoint's training size
    assert str(report_path) in capsys.readouterr().out


def test_reconstruct_with_checkpoint(tiny_run: Path, tmp_path: Path) -> None:
    from skimage import data

    from msma.cli.reconstruct import cli_main
    from msma.inference import Reconstructor

    checkpoint = _best(tiny_run)
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
