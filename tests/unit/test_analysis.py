"""msma.analysis: run folders and their logs, W&B offline behaviour, per-face evaluation with yaw bins,
plots and the qualitative grid."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from msma import analysis as nbu

CSV = """epoch,lr-Adam,step,train/loss,train/lm,val/nme,val/vertex_posed_mm,val/vertex_aligned_mm
0,0.001,0,,,,,
0,,0,2.5,0.4,,,
0,,1,2.0,0.3,,,
0,,1,,,0.08,3.5,2.0
1,,2,1.5,0.2,,,
1,,3,1.2,0.1,,,
1,,3,,,0.05,2.5,1.5
"""


def make_run(root: Path, experiment: str, run_id: str, best: bool = True, metrics: bool = True) -> Path:
    run = root / experiment / run_id
    (run / "csv").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "config.yaml").write_text(f"name: {experiment}\nseed: 0\n")
    (run / "csv" / "metrics.csv").write_text(CSV)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    if best:
        (run / "checkpoints" / "best-001-0000003.ckpt").write_bytes(b"x")
    if metrics:
        (run / "metrics.json").write_text(
            json.dumps(
                {
                    "trained": {"nme": 0.04, "vertex_posed_mm": 2.0, "vertex_aligned_mm": 1.25},
                    "untrained_mean_face": {"nme": 0.1},
                    "nme_ratio": 0.4,
                }
            )
        )
    return run


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MSMA_NB_TINY", "1")
    monkeypatch.setenv("MSMA_NB_OUT", str(tmp_path / "out"))
    monkeypatch.delenv("MSMA_NB_RUNS", raising=False)
    monkeypatch.delenv("MSMA_NB_LAUNCH", raising=False)
    s = nbu.notebook_settings(tmp_path)
    assert s.tiny and not s.launch
    assert s.out_dir == tmp_path / "out" and s.out_dir.is_dir()
    assert s.runs_root == tmp_path / "runs"
    monkeypatch.setenv("MSMA_NB_TINY", "0")
    assert not nbu.notebook_settings(tmp_path).tiny


def test_find_runs_and_checkpoints(tmp_path: Path) -> None:
    make_run(tmp_path, "msma_lka", "20260101-000000")
    newer = make_run(tmp_path, "msma_lka", "20260102-000000", best=False, metrics=False)
    make_run(tmp_path, "deep3d_r50", "20260101-000000")
    (tmp_path / "msma_lka" / "not_a_run").mkdir()
    runs = nbu.find_runs(tmp_path)
    assert [r.name for r in runs] == [
        "deep3d_r50/20260101-000000",
        "msma_lka/20260101-000000",
        "msma_lka/20260102-000000",
    ]
    assert runs[1].best_checkpoint is not None and runs[1].checkpoint == runs[1].best_checkpoint
    assert runs[2].best_checkpoint is None and runs[2].checkpoint == newer / "checkpoints" / "last.ckpt"
    latest = nbu.latest_run(tmp_path, "msma_lka")
    assert latest is not None and latest.run_dir == newer
    assert nbu.find_runs(tmp_path, ["deep3d_r50"])[0].experiment == "deep3d_r50"
    assert nbu.find_runs(tmp_path / "missing") == []
    # best*.ckpt of any run wins over a newer last.ckpt.
    ckpt = nbu.latest_checkpoint(tmp_path, "msma_lka")
    assert ckpt is not None and ckpt.name.startswith("best") and "20260101" in str(ckpt)
    assert nbu.latest_checkpoint(tmp_path, "mlanet") is None


def test_read_metrics_csv_merges_sparse_rows(tmp_path: Path) -> None:
    run = make_run(tmp_path, "quickstart", "r1")
    df = nbu.read_metrics_csv(run)
    assert list(df["step"]) == [0, 1, 2, 3]
    assert df.loc[df["step"] == 1, "train/loss"].item() == 2.0
    assert df.loc[df["step"] == 1, "val/nme"].item() == pytest.approx(0.08)
    assert df.loc[df["step"] == 0, "lr-Adam"].item() == pytest.approx(1e-3)
    with pytest.raises(FileNotFoundError, match="metrics.csv"):
        nbu.read_metrics_csv(tmp_path / "nothing")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="bad.csv"):
        nbu.read_metrics_csv(bad)


def test_runs_summary(tmp_path: Path) -> None:
    make_run(tmp_path, "msma_lka", "a")
    make_run(tmp_path, "deep3d_r50", "b", metrics=False)
    table = nbu.runs_summary(nbu.find_runs(tmp_path)).set_index("experiment")
    assert table.loc["msma_lka", "steps"] == 4
    assert table.loc["msma_lka", "train_loss"] == pytest.approx(1.2)
    assert table.loc["msma_lka", "val_nme_pct"] == pytest.approx(5.0)
    assert table.loc["msma_lka", "val_vertex_posed_mm"] == pytest.approx(2.5)
    assert table.loc["msma_lka", "val_vertex_aligned_mm"] == pytest.approx(1.5)
    assert table.loc["msma_lka", "heldout_vertex_aligned_mm"] == pytest.approx(1.25)
    assert table.loc["msma_lka", "heldout_nme_pct"] == pytest.approx(4.0)
    assert table.loc["msma_lka", "nme_ratio"] == pytest.approx(0.4)
    assert math.isnan(table.loc["deep3d_r50", "heldout_nme_pct"])


def test_metrics_json_errors_name_the_file(tmp_path: Path) -> None:
    run = make_run(tmp_path, "x", "r", metrics=False)
    assert nbu.read_metrics_json(run) is None
    (run / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="metrics.json"):
        nbu.read_metrics_json(run)


def test_wandb_offline_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    frame, status = nbu.wandb_histories("msma")
    assert frame.empty and "WANDB_MODE=offline" in status
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", os.devnull)
    frame, status = nbu.wandb_histories("msma")
    assert frame.empty and "no W&B account" in status


def test_yaw_bin_table() -> None:
    per_face = pd.DataFrame(
        {
            "run": ["b", "b", "b", "a", "a"],
            "yaw_bin": ["0-30", "0-30", "60-90", "0-30", "30-60"],
            "nme_pct": [1.0, 3.0, 6.0, 2.0, 4.0],
        }
    )
    t = nbu.yaw_bin_table(per_face)
    assert list(t.index) == ["b", "a"]
    assert list(t.columns) == ["0-30", "30-60", "60-90", "mean", "all", "faces"]
    assert t.loc["b", "0-30"] == 2.0 and math.isnan(t.loc["b", "30-60"]) and t.loc["b", "60-90"] == 6.0
    assert t.loc["b", "mean"] == 4.0  # mean of the non-empty bins
    assert t.loc["b", "all"] == pytest.approx(10.0 / 3.0)
    assert t.loc["a", "faces"] == 2
    with pytest.raises(ValueError, match="vertex_mm"):
        nbu.yaw_bin_table(per_face, "vertex_mm")


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> nbu.EvalFaces:
    torch.set_num_threads(1)
    return nbu.load_eval_faces(4, 32, seed=0, cache_dir=tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="module")
def mean_face_module():  # type: ignore[no-untyped-def]
    from msma.checkpoint import untrained_pipeline

    return untrained_pipeline(renderer_backend="torch")


def test_evaluate_per_face_matches_training_evaluation(faces: nbu.EvalFaces, mean_face_module) -> None:  # type: ignore[no-untyped-def]
    from msma.metrics.nme import nme as landmark_nme
    from msma.metrics.nme import yaw_bin

    assert faces.image.shape == (4, 3, 32, 32) and faces.image_size == 32 and faces.size == 4
    df = nbu.evaluate_per_face({"mean": mean_face_module, "again": mean_face_module}, faces, batch_size=3)
    assert len(df) == 8 and list(df["run"].unique()) == ["mean", "again"]
    mean = df[df["run"] == "mean"]
    with torch.no_grad():
        out = mean_face_module.reconstruct(faces.image, render=False)
    expected = 100.0 * landmark_nme(out.face.landmarks_2d, faces.landmarks)
    np.testing.assert_allclose(mean["nme_pct"].to_numpy(), expected.numpy(), rtol=1e-5)
    assert (mean["vertex_aligned_mm"] > 0).all()
    assert (mean["vertex_posed_mm"] >= mean["vertex_aligned_mm"] - 1e-6).all()
    np.testing.assert_allclose(mean["nme"].to_numpy() * 100.0, mean["nme_pct"].to_numpy())
    labels = [nbu.YAW_BIN_LABELS[int(b)] for b in yaw_bin(faces.yaw_deg)]
    assert list(mean["yaw_bin"]) == labels
    table = nbu.yaw_bin_table(df, "vertex_aligned_mm")
    assert table.loc["mean", "all"] == pytest.approx(table.loc["again", "all"])


def _png_ok(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        return im.size


def test_plots_and_grid(faces: nbu.EvalFaces, mean_face_module, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = make_run(tmp_path / "runs", "quickstart", "r1")
    fig = nbu.plot_training_curves({"r1": nbu.read_metrics_csv(run)}, ["train/loss", "val/nme", "absent"])
    assert len(fig.axes) == 3 and len(fig.axes[0].lines) == 1 and not fig.axes[2].lines
    _png_ok(nbu.save_figure(fig, tmp_path / "curves.png"))
    df = nbu.evaluate_per_face({"mean": mean_face_module}, faces)
    fig = nbu.plot_yaw_bins(
        {"NME (%)": nbu.yaw_bin_table(df), "vertex (mm)": nbu.yaw_bin_table(df, "vertex_aligned_mm")}
    )
    assert len(fig.axes) == 2
    _png_ok(nbu.save_figure(fig, tmp_path / "yaw.png"))
    picture, titles = nbu.qualitative_grid(
        {"a": mean_face_module, "b": mean_face_module}, faces, count=3, display_size=32
    )
    assert picture.shape == (3 * 32, 3 * 32, 3) and picture.dtype == np.uint8
    assert titles == ["input", "a", "b"]
    # The overlay columns differ from the input (the face is drawn), the two identical runs agree.
    assert np.abs(picture[:, 32:64].astype(int) - picture[:, :32].astype(int)).mean() > 1.0
    np.testing.assert_array_equal(picture[:, 32:64], picture[:, 64:96])
    assert _png_ok(nbu.save_figure(picture, tmp_path / "grid.png")) == (96, 96)
    big, _ = nbu.qualitative_grid({"a": mean_face_module}, faces, count=2, display_size=64)
    assert big.shape == (2 * 64, 2 * 64, 3)
    # The input column is the crop upsampled: its mean colour matches the crop's.
    crop_mean = faces.image[:2].mean().item() * 255.0
    assert abs(big[:, :64].astype(float).mean() - crop_mean) < 3.0


def test_plot_mesh(tmp_path: Path) -> None:
    v = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]], dtype=float)
    f = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]])
    fig = nbu.plot_mesh(v, f, colors=np.full((4, 3), 0.5))
    assert len(fig.axes) == 2
    _png_ok(nbu.save_figure(fig, tmp_path / "mesh.png"))
    with pytest.raises(ValueError, match="triangles"):
        nbu.plot_mesh(v, f[:, :2])


def test_render_views(mean_face_module, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    params = mean_face_module.face_model.layout.zeros(1)
    pic = nbu.render_views(mean_face_module, params, yaws_deg=(0.0, 60.0), image_size=48)
    assert pic.shape == (2 * 48, 2 * 48, 3) and pic.dtype == np.uint8
    # A face in the middle of a white background; the turned face differs from the frontal one.
    assert (pic[0, 0] == 255).all() and (pic[24, 24] < 250).any()
    assert np.abs(pic[:48, :48].astype(int) - pic[:48, 48:].astype(int)).mean() > 2.0
    # Frontal face symmetric about the vertical axis (geometry row).
    geo = pic[48:, :48].astype(float)
    assert np.abs(geo - geo[:, ::-1]).mean() < 12.0
    only = nbu.render_views(mean_face_module, params, yaws_deg=(0.0,), image_size=32, shading="geometry")
    assert only.shape == (32, 32, 3)
    with pytest.raises(ValueError, match="one face"):
        nbu.render_views(mean_face_module, mean_face_module.face_model.layout.zeros(2))


def test_ensure_runs_skips_or_trains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(1)
    make_run(tmp_path / "runs", "msma_lka", "20260101-000000")
    got = nbu.ensure_runs(["msma_lka", "msma_no_fusion"], tmp_path / "runs", None)
    assert list(got) == ["msma_lka"] and "msma_no_fusion: no run" in capsys.readouterr().out
    # Trains the missing one with the tiny overrides, reuses the existing one (no new folder).
    overrides = nbu.tiny_training_overrides(tmp_path / "synth")
    got = nbu.ensure_runs(["msma_no_fusion", "msma_lka"], tmp_path / "runs", overrides)
    assert list(got) == ["msma_no_fusion", "msma_lka"]
    assert got["msma_no_fusion"].checkpoint is not None and got["msma_no_fusion"].experiment == "msma_no_fusion"
    assert len(list((tmp_path / "runs" / "msma_lka").iterdir())) == 1
    log = nbu.read_metrics_csv(got["msma_no_fusion"])
    assert log["train/loss"].notna().sum() == 4 and log["val/nme"].notna().sum() == 2


def test_load_newest_looks_again_when_the_checkpoint_vanished(tmp_path: Path) -> None:
    run = make_run(tmp_path, "quickstart", "20260101-000000")
    calls: list[Path | None] = []

    def loader(path: Path | None) -> str:
        calls.append(path)
        if path is not None and path.name.startswith("best"):
            path.unlink()  # a run in progress replaced its best checkpoint
            raise FileNotFoundError(path)
        return "loaded"

    ckpt, value = nbu.load_newest(tmp_path, "quickstart", loader)
    assert value == "loaded" and ckpt == run / "checkpoints" / "last.ckpt"
    assert [p.name for p in calls if p is not None] == ["best-001-0000003.ckpt", "last.ckpt"]
    assert nbu.load_newest(tmp_path, "mlanet", lambda p: p) == (None, None)


def test_load_run_model(tmp_path: Path) -> None:
    from msma.config import compose_experiment
    from msma.training.run import run_training

    torch.set_num_threads(1)
    overrides = [
        "+preset=embedded",
        *nbu.tiny_training_overrides(tmp_path / "synth"),
        "trainer.max_steps=1",
        "trainer.max_epochs=1",
    ]
    run_training(compose_experiment("deep3d_r50", overrides), tmp_path / "runs" / "deep3d_r50" / "r1")
    (run,) = nbu.find_runs(tmp_path / "runs")
    module = nbu.load_run_model(run)
    assert module.config["name"] == "deep3d_r50" and not module.training
    empty = make_run(tmp_path / "other", "x", "r", best=False)
    (empty / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        nbu.load_run_model(nbu.RunInfo("x", empty, None, None))


def test_core_does_not_import_the_analysis_extra() -> None:
    """pandas belongs to the ``analysis`` extra: training, evaluation and inference never import it."""
    import subprocess
    import sys

    code = (
        "import sys, msma.checkpoint, msma.training.run, msma.cli.eval, msma.cli.reconstruct, msma.inference; "
        "print('pandas' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "False", out.stderr
