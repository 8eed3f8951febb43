"""Helpers for the notebooks (notebooks/ablation.ipynb, notebooks/quickstart.ipynb), so that they stay short.

- settings from the environment (``MSMA_NB_TINY``, ``MSMA_NB_OUT``, ``MSMA_NB_RUNS``: what
  ``scripts/run_notebooks.py`` and the tests pass to the kernel);
- run folders (``runs/<experiment>/<run>/``, docs/training.md): their CSV logs and ``metrics.json`` as pandas;
- W&B run histories when an account is configured (optional; offline-safe: never raises, never waits on a
  network that is not there);
- evaluation of several checkpoints on the same synthetic test faces, per face, with AFLW2000-3D yaw bins;
- plots (training curves, per-yaw-bin bars) and the qualitative grid ``input | overlay per run``;
- a matplotlib rendering of a reconstructed mesh.

Units: landmark NME in percent of ``sqrt(w*h)`` of the ground-truth landmark box; vertex errors in mm.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from msma.face_model.params import FaceParams
    from msma.module import FaceReconModule

__all__ = [
    "YAW_BIN_LABELS",
    "NotebookSettings",
    "RunInfo",
    "EvalFaces",
    "notebook_settings",
    "find_runs",
    "latest_run",
    "latest_checkpoint",
    "load_newest",
    "load_run_module",
    "tiny_training_overrides",
    "ensure_runs",
    "read_metrics_csv",
    "read_metrics_json",
    "runs_summary",
    "wandb_histories",
    "load_eval_faces",
    "evaluate_per_face",
    "yaw_bin_table",
    "plot_training_curves",
    "plot_yaw_bins",
    "qualitative_grid",
    "plot_mesh",
    "render_views",
    "save_figure",
]

T = TypeVar("T")

#: AFLW2000-3D yaw bins (|yaw| <= 30, <= 60, > 60 degrees; msma.metrics.nme.yaw_bin).
YAW_BIN_LABELS: tuple[str, str, str] = ("0-30", "30-60", "60-90")

_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class NotebookSettings:
    """Parameters of a notebook run, read from the environment.

    Attributes:
        tiny: ``MSMA_NB_TINY`` set: tiny settings (tests, ``make notebooks ARGS=--tiny``).
        out_dir: ``MSMA_NB_OUT`` (default ``runs/notebooks``): where plots are saved (created).
        runs_root: ``MSMA_NB_RUNS`` (default ``runs``): the run folders the notebooks read.
        launch: ``MSMA_NB_LAUNCH`` set: train the experiments that have no run yet (full mode).
    """

    tiny: bool
    out_dir: Path
    runs_root: Path
    launch: bool


def notebook_settings(root: str | Path = ".") -> NotebookSettings:
    """Reads :class:`NotebookSettings` from the environment; relative defaults are under ``root``."""
    base = Path(root)
    out = Path(os.environ.get("MSMA_NB_OUT") or base / "runs" / "notebooks")
    out.mkdir(parents=True, exist_ok=True)
    return NotebookSettings(
        tiny=os.environ.get("MSMA_NB_TINY", "").strip().lower() in _TRUE,
        out_dir=out,
        runs_root=Path(os.environ.get("MSMA_NB_RUNS") or base / "runs"),
        launch=os.environ.get("MSMA_NB_LAUNCH", "").strip().lower() in _TRUE,
    )


# ------------------------------------------------------------------------------------------- run folders
@dataclass(frozen=True)
class RunInfo:
    """One run folder written by ``msma train`` (docs/training.md).

    Attributes:
        experiment: the experiment name (``name`` in config.yaml, else the parent folder's name).
        run_dir: ``runs/<experiment>/<run id>``.
        best_checkpoint: ``checkpoints/best-*.ckpt`` (newest), or None.
        last_checkpoint: ``checkpoints/last.ckpt``, or None.
    """

    experiment: str
    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None

    @property
    def name(self) -> str:
        """``<experiment>/<run id>``."""
        return f"{self.experiment}/{self.run_dir.name}"

    @property
    def checkpoint(self) -> Path | None:
        """The best checkpoint, else ``last.ckpt``."""
        return self.best_checkpoint or self.last_checkpoint


def _run_info(run_dir: Path) -> RunInfo:
    experiment = run_dir.parent.name
    cfg = run_dir / "config.yaml"
    if cfg.is_file():
        import yaml

        try:
            data = yaml.safe_load(cfg.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"{cfg}: not valid YAML ({err})") from err
        if isinstance(data, dict) and data.get("name"):
            experiment = str(data["name"])
    ckpts = run_dir / "checkpoints"
    best = sorted(ckpts.glob("best*.ckpt"), key=lambda p: p.stat().st_mtime)
    last = ckpts / "last.ckpt"
    return RunInfo(experiment, run_dir, best[-1] if best else None, last if last.is_file() else None)


def find_runs(runs_root: str | Path, experiments: Sequence[str] | None = None) -> list[RunInfo]:
    """Every run folder ``<runs_root>/<experiment>/<run>/`` holding a ``config.yaml`` or a CSV log.

    Args:
        runs_root: the ``runs/`` folder.
        experiments: only these experiment folders (default: all).

    Returns:
        Runs sorted by experiment, then by run id (timestamps sort chronologically).
    """
    root = Path(runs_root)
    if not root.is_dir():
        return []
    out: list[RunInfo] = []
    for exp_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if experiments is not None and exp_dir.name not in experiments:
            continue
        for run_dir in sorted(p for p in exp_dir.iterdir() if p.is_dir()):
            if (run_dir / "config.yaml").is_file() or (run_dir / "csv" / "metrics.csv").is_file():
                out.append(_run_info(run_dir))
    return out


def latest_run(runs_root: str | Path, experiment: str, with_checkpoint: bool = True) -> RunInfo | None:
    """The newest run of ``experiment`` (by run id), optionally only among runs with a checkpoint."""
    runs = [r for r in find_runs(runs_root, [experiment]) if r.checkpoint is not None or not with_checkpoint]
    return runs[-1] if runs else None


def latest_checkpoint(runs_root: str | Path, experiment: str) -> Path | None:
    """Newest ``<runs_root>/<experiment>/*/checkpoints/best*.ckpt``, else the newest ``last.ckpt``, else None."""
    root = Path(runs_root) / experiment
    for pattern in ("*/checkpoints/best*.ckpt", "*/checkpoints/last.ckpt"):
        found = sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime)
        if found:
            return found[-1]
    return None


def load_newest(
    runs_root: str | Path, experiment: str, loader: Callable[[Path | None], T], attempts: int = 3
) -> tuple[Path | None, T]:
    """``loader(latest_checkpoint(runs_root, experiment))``, looking again when the file vanished meanwhile.

    A run still training replaces its ``best-*.ckpt`` (top-1) between the search and the load; the search is
    then repeated (at most ``attempts`` times). ``loader`` receives None when there is no checkpoint.

    Returns:
        (the checkpoint used or None, what ``loader`` returned).
    """
    for attempt in range(attempts):
        ckpt = latest_checkpoint(runs_root, experiment)
        try:
            return ckpt, loader(ckpt)
        except FileNotFoundError:
            if ckpt is None or ckpt.is_file() or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def load_run_module(run: RunInfo, map_location: str | torch.device = "cpu", attempts: int = 3) -> FaceReconModule:
    """The module of a run's best checkpoint (else ``last.ckpt``), re-reading the run folder when a run still
    training replaced the file in the meantime.

    Raises:
        FileNotFoundError: the run has no checkpoint (the folder is named).
    """
    from msma.builders import load_module_from_checkpoint

    for attempt in range(attempts):
        ckpt = _run_info(run.run_dir).checkpoint
        if ckpt is None:
            raise FileNotFoundError(f"{run.run_dir}: no checkpoint (checkpoints/best*.ckpt or last.ckpt)")
        try:
            return load_module_from_checkpoint(ckpt, map_location=map_location)
        except FileNotFoundError:
            if ckpt.is_file() or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def tiny_training_overrides(synthetic_cache_dir: str | Path) -> list[str]:
    """Hydra overrides that shrink any experiment to a few CPU steps (the notebooks' tiny mode).

    32 px crops, batches of 2, 4 synthetic training faces (2 steps per epoch), 2 epochs (4 steps, a validation
    after each), ResNet-18 with narrow MSMA fusion widths, CSV log only, no final evaluation.

    Args:
        synthetic_cache_dir: where the synthetic faces are generated and cached.
    """
    return [
        "trainer=cpu",
        "renderer=torch",
        "logger=csv",
        "num_threads=1",
        "model.pretrained=false",
        "model.backbone=resnet18",
        "model.channels=[12,24,48]",
        "data=synthetic",
        "data.image_size=32",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.pin_memory=false",
        "data.persistent_workers=false",
        "data.num_samples=4",
        "data.val_samples=2",
        "data.augment=false",
        f"data.synthetic_cache_dir={synthetic_cache_dir}",
        "trainer.max_epochs=2",
        "trainer.max_steps=4",
        "trainer.limit_val_batches=1",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n=1",
        "trainer.grid_every_n=0",
        "final_eval=false",
    ]


def ensure_runs(
    experiments: Sequence[str], runs_root: str | Path, launch_overrides: Sequence[str] | None = None
) -> dict[str, RunInfo]:
    """The newest run with a checkpoint of each experiment; missing ones trained when ``launch_overrides`` is given.

    Args:
        experiments: experiment names (``experiments/<name>.yaml``).
        runs_root: the runs folder (``<runs_root>/<experiment>/<YYYYmmdd-HHMMSS>/``).
        launch_overrides: Hydra overrides for the runs trained here (``[]``: the experiment as configured);
            None: never train, skip experiments without a run (a line is printed for each).

    Returns:
        experiment -> run, in the order of ``experiments``.
    """
    import time

    from msma.config import compose_experiment
    from msma.train import run_training

    out: dict[str, RunInfo] = {}
    for exp in experiments:
        run = latest_run(runs_root, exp)
        if run is None and launch_overrides is not None:
            t0 = time.perf_counter()
            cfg = compose_experiment(exp, list(launch_overrides))
            run_training(cfg, Path(runs_root) / exp / time.strftime("%Y%m%d-%H%M%S"))
            print(f"trained {exp} in {time.perf_counter() - t0:.0f} s")
            run = latest_run(runs_root, exp)
        if run is None:
            print(f"{exp}: no run with a checkpoint under {runs_root}; skipped")
            continue
        out[exp] = run
    return out


def read_metrics_csv(run: RunInfo | str | Path) -> pd.DataFrame:
    """A run's ``csv/metrics.csv`` (Lightning CSVLogger) as one row per logged step.

    Lightning writes training and validation scalars on separate, sparse rows; rows of the same ``step`` are
    merged (first non-empty value per column). Columns: ``step``, ``epoch`` and every logged name
    (``train/loss``, ``val/nme`` (fraction), ``val/vertex_mm`` (mm), ...).

    Raises:
        FileNotFoundError: the run has no CSV log (the path is named).
        ValueError: the file has no ``step`` column.
    """
    run_dir = run.run_dir if isinstance(run, RunInfo) else Path(run)
    path = run_dir / "csv" / "metrics.csv" if run_dir.is_dir() else run_dir
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no CSV log (was the run started with msma train?)")
    df = pd.read_csv(path)
    if "step" not in df.columns:
        raise ValueError(f"{path}: not a Lightning CSV log (no 'step' column; columns: {list(df.columns)})")
    return df.groupby("step", as_index=False, sort=True).first()


def read_metrics_json(run: RunInfo | str | Path) -> dict[str, Any] | None:
    """A run's ``metrics.json`` (final held-out evaluation), or None when the run has none.

    Raises:
        ValueError: the file exists but is not a JSON object (the path is named).
    """
    run_dir = run.run_dir if isinstance(run, RunInfo) else Path(run)
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def runs_summary(runs: Sequence[RunInfo]) -> pd.DataFrame:
    """One row per run: the last logged training loss and validation metrics (CSV), and ``metrics.json``.

    Columns: ``run``, ``experiment``, ``steps``, ``train_loss``, ``val_nme_pct``, ``val_vertex_mm`` (camera
    frame), ``val_vertex_aligned_mm`` (rigidly aligned; NaN where not logged), ``test_nme_pct``,
    ``test_vertex_mm``, ``test_vertex_aligned_mm``, ``mean_face_nme_pct``, ``nme_ratio`` (NaN without
    ``metrics.json``). NME in percent, vertex errors in mm.
    """
    rows = []
    for run in runs:
        row: dict[str, Any] = {"run": run.name, "experiment": run.experiment}
        try:
            df = read_metrics_csv(run)
        except FileNotFoundError:
            df = pd.DataFrame({"step": []})

        def last(col: str, frame: pd.DataFrame = df) -> float:
            if col not in frame.columns:
                return math.nan
            vals = frame[col].dropna()
            return float(vals.iloc[-1]) if len(vals) else math.nan

        row["steps"] = int(df["step"].max()) + 1 if len(df) else 0
        row["train_loss"] = last("train/loss")
        row["val_nme_pct"] = 100.0 * last("val/nme")
        row["val_vertex_mm"] = last("val/vertex_mm")
        row["val_vertex_aligned_mm"] = last("val/vertex_aligned_mm")
        js = read_metrics_json(run) or {}
        trained = js.get("trained", {})
        mean_face = js.get("untrained_mean_face", {})
        row["test_nme_pct"] = 100.0 * float(trained.get("nme", math.nan))
        row["test_vertex_mm"] = float(trained.get("vertex_mm", math.nan))
        row["test_vertex_aligned_mm"] = float(trained.get("vertex_aligned_mm", math.nan))
        row["mean_face_nme_pct"] = 100.0 * float(mean_face.get("nme", math.nan))
        row["nme_ratio"] = float(js.get("nme_ratio", math.nan))
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------- W&B
def _wandb_unavailable_reason() -> str | None:
    """Why the W&B API cannot be used here (no account, offline mode), or None. Never touches the network."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "disabled", "dryrun"):
        return f"WANDB_MODE={mode}"
    if os.environ.get("WANDB_API_KEY"):
        return None
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="replace"):
        return None
    return "no W&B account configured (WANDB_API_KEY or `wandb login`)"


def wandb_histories(
    project: str = "msma", entity: str | None = None, names: Sequence[str] | None = None, timeout: int = 10
) -> tuple[pd.DataFrame, str]:
    """Scalar histories of the project's W&B runs, when W&B is reachable.

    Args:
        project: W&B project.
        entity: W&B entity (default: the account's).
        names: only runs with these display names (experiment names; default: all).
        timeout: API timeout in seconds.

    Returns:
        (frame, status): a long frame with columns ``run``, ``experiment`` (display name), ``_step`` and the
        logged scalars (empty when W&B is unavailable), and a one-line status saying where the data came from
        or why there is none. Never raises on network or account problems.
    """
    reason = _wandb_unavailable_reason()
    if reason is not None:
        return pd.DataFrame(), f"W&B not used: {reason}"
    try:
        import wandb

        api = wandb.Api(timeout=timeout)
        path = f"{entity}/{project}" if entity else project
        frames = []
        for run in api.runs(path):
            if names is not None and run.name not in names:
                continue
            hist = run.history(pandas=True)
            if hist is None or len(hist) == 0:
                continue
            hist = hist.assign(run=run.id, experiment=run.name)
            frames.append(hist)
    except Exception as exc:  # any W&B/network failure: report it, the notebook goes on with the CSV logs
        return pd.DataFrame(), f"W&B not used: {type(exc).__name__}: {exc}"
    if not frames:
        return pd.DataFrame(), f"W&B project {project!r}: no matching runs"
    return pd.concat(frames, ignore_index=True), f"W&B project {project!r}: {len(frames)} runs"


# ------------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class EvalFaces:
    """A fixed set of synthetic test faces (the same for every run being compared).

    Attributes:
        image: (B, 3, S, S) float RGB crops in [0, 1].
        landmarks: (B, 68, 2) ground-truth landmarks, crop pixels (x right, y down).
        vertices: (B, N, 3) ground-truth posed vertices in mm, camera frame.
        yaw_deg: (B,) ground-truth yaw in degrees.
    """

    image: Tensor
    landmarks: Tensor
    vertices: Tensor
    yaw_deg: Tensor

    @property
    def size(self) -> int:
        """Number of faces B."""
        return int(self.image.shape[0])

    @property
    def image_size(self) -> int:
        """Crop side S in pixels."""
        return int(self.image.shape[-1])


def load_eval_faces(
    num_samples: int,
    image_size: int,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    face_model: str = "ict",
    face_model_path: str | None = None,
) -> EvalFaces:
    """The synthetic test split of msma's datamodule (seed ``seed + TEST_SEED_OFFSET``), first ``num_samples``.

    The same faces ``msma eval --data synthetic`` evaluates (its default generation settings).

    Args:
        num_samples: number of faces.
        image_size: crop side in pixels.
        seed: the data seed of the runs (``data.seed``; their test split).
        cache_dir: synthetic cache folder (default ``$MSMA_HOME/synthetic``).
        face_model: the runs' face model name (``face_model.name`` of their config: ``"ict"`` or ``"bfm"``).
        face_model_path: its file/folder (``face_model.path``; None: the default location).
    """
    from msma.builders import build_face_model
    from msma.data.batch import collate_samples
    from msma.data.datamodule import TEST_SEED_OFFSET
    from msma.data.synthetic import SyntheticFaceDataset
    from msma.face_model.assets import msma_home

    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    model = build_face_model(face_model, face_model_path)
    dataset = SyntheticFaceDataset(
        model,  # type: ignore[arg-type]
        num_samples=num_samples,
        seed=seed + TEST_SEED_OFFSET,
        image_size=image_size,
        cache_dir=str(cache_dir) if cache_dir is not None else str(msma_home() / "synthetic"),
        progress=False,
    )
    dataset.ensure_generated()
    batch = collate_samples([dataset[i] for i in range(num_samples)])
    if batch.vertices is None:
        raise ValueError("synthetic test faces came without ground-truth vertices")
    return EvalFaces(batch.image, batch.landmarks, batch.vertices, batch.yaw)


def _rendered_vertex_mask(module: FaceReconModule) -> Tensor:
    """(N,) 1 for vertices used by the rendered triangles (the region the photometric loss sees)."""
    fm = module.face_model
    tri: Tensor = fm.tri  # type: ignore[assignment]
    mask = torch.zeros(int(fm.n_vertices), device=tri.device)  # type: ignore[arg-type]
    mask[tri.unique()] = 1.0
    return mask


@torch.no_grad()
def evaluate_per_face(modules: Mapping[str, FaceReconModule], faces: EvalFaces, batch_size: int = 16) -> pd.DataFrame:
    """Per-face errors of several models on the same faces.

    Args:
        modules: label -> module (e.g. ``msma.builders.load_module_from_checkpoint(path)``), all of the same
            face model as ``faces``.
        faces: the test faces.
        batch_size: faces per forward pass.

    Returns:
        Long frame, one row per (run, face): ``run``, ``face``, ``yaw_deg``, ``yaw_bin`` (one of
        :data:`YAW_BIN_LABELS`), ``nme_pct`` (2D 68-point NME, % of sqrt(w*h) of the GT box), ``vertex_mm``
        (per-vertex error after rigid alignment, rendered region, mm), ``vertex_raw_mm`` (as posed, mm).
    """
    from msma.metrics.nme import nme, yaw_bin
    from msma.metrics.synthetic import per_vertex_error

    bins = yaw_bin(faces.yaw_deg)
    rows: list[dict[str, Any]] = []
    for label, module in modules.items():
        module = module.eval()
        device = next(module.parameters()).device
        mask = _rendered_vertex_mask(module).to(device)
        for start in range(0, faces.size, batch_size):
            sl = slice(start, start + batch_size)
            out = module.reconstruct(faces.image[sl].to(device), render=False)
            gt_v = faces.vertices[sl].to(device)
            if out.face.vertices.shape != gt_v.shape:
                raise ValueError(
                    f"{label}: predicted vertices {tuple(out.face.vertices.shape)} do not match the test faces' "
                    f"{tuple(gt_v.shape)} (another face model?)"
                )
            n = nme(out.face.landmarks_2d.float(), faces.landmarks[sl].to(device).float()) * 100.0
            v = per_vertex_error(out.face.vertices.float(), gt_v.float(), "rigid", mask)
            v_raw = per_vertex_error(out.face.vertices.float(), gt_v.float(), "none", mask)
            for j in range(n.shape[0]):
                i = start + j
                b = int(bins[i])
                rows.append(
                    {
                        "run": label,
                        "face": i,
                        "yaw_deg": float(faces.yaw_deg[i]),
                        "yaw_bin": YAW_BIN_LABELS[b] if b >= 0 else "unknown",
                        "nme_pct": float(n[j]),
                        "vertex_mm": float(v[j]),
                        "vertex_raw_mm": float(v_raw[j]),
                    }
                )
    return pd.DataFrame(rows)


def yaw_bin_table(per_face: pd.DataFrame, value: str = "nme_pct") -> pd.DataFrame:
    """Mean ``value`` per run and yaw bin, AFLW2000-3D style.

    Args:
        per_face: :func:`evaluate_per_face`'s frame.
        value: ``nme_pct``, ``vertex_mm`` or ``vertex_raw_mm``.

    Returns:
        Index: run (in first-seen order); columns: the three yaw bins (NaN when a bin has no face), ``mean``
        (mean of the non-empty bins' means, the AFLW2000-3D "balanced" mean), ``all`` (mean over all faces) and
        ``faces``.
    """
    if value not in per_face.columns:
        raise ValueError(f"yaw_bin_table: no column {value!r} (columns: {list(per_face.columns)})")
    order = list(dict.fromkeys(per_face["run"]))
    table = per_face.pivot_table(index="run", columns="yaw_bin", values=value, aggfunc="mean")
    table = table.reindex(index=order, columns=list(YAW_BIN_LABELS))
    table["mean"] = table[list(YAW_BIN_LABELS)].mean(axis=1, skipna=True)
    grouped = per_face.groupby("run", sort=False)[value]
    table["all"] = grouped.mean().reindex(order)
    table["faces"] = grouped.size().reindex(order)
    table.columns.name = None
    return table


# -------------------------------------------------------------------------------------------- plots
def plot_training_curves(
    logs: Mapping[str, pd.DataFrame], metrics: Sequence[str] = ("train/loss", "val/nme")
) -> Figure:
    """Training curves: one panel per metric, one line per run (x: optimiser step).

    Args:
        logs: label -> :func:`read_metrics_csv` frame.
        metrics: columns to plot (missing ones leave an empty, labelled panel).
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for label, df in logs.items():
            if metric in df.columns:
                d = df[["step", metric]].dropna()
                if len(d):
                    ax.plot(d["step"], d[metric], marker="o" if len(d) < 20 else None, ms=3, label=label)
        ax.set_xlabel("step")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_yaw_bins(tables: Mapping[str, pd.DataFrame]) -> Figure:
    """Grouped bars per yaw bin (and the balanced mean), one bar per run, one panel per metric.

    Args:
        tables: panel title (e.g. ``"landmark NME (%)"``) -> :func:`yaw_bin_table` frame.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 3.8), squeeze=False)
    groups = [*YAW_BIN_LABELS, "mean"]
    for ax, (title, table) in zip(axes[0], tables.items()):
        runs = list(table.index)
        width = 0.8 / max(1, len(runs))
        x = np.arange(len(groups))
        for k, run in enumerate(runs):
            vals = table.loc[run, groups].to_numpy(dtype=float)
            ax.bar(x + (k - (len(runs) - 1) / 2) * width, np.nan_to_num(vals), width, label=str(run))
        ax.set_xticks(x, [f"yaw {g}" if g != "mean" else "mean" for g in groups])
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


@torch.no_grad()
def qualitative_grid(
    modules: Mapping[str, FaceReconModule], faces: EvalFaces, count: int = 4, display_size: int = 128
) -> tuple[np.ndarray, list[str]]:
    """The same faces across runs: ``input | overlay of run 1 | overlay of run 2 | ...``.

    Each overlay is the run's rendering composited on the input with its predicted landmarks (red) and the
    ground truth (green) drawn on top.

    Args:
        modules: label -> module (with a renderer).
        faces: the test faces (the first ``count`` are shown).
        count: rows.
        display_size: side D of each panel in pixels (crops smaller than this are upsampled bilinearly after
            rendering, so the landmark dots stay readable); at least the crop size S.

    Returns:
        ((rows * D, (1 + runs) * D, 3) uint8 picture, column titles), D = max(display_size, S).
    """
    import torch.nn.functional as F

    from msma.viz import landmark_panel, overlay

    rows = min(count, faces.size)
    if rows < 1:
        raise ValueError("qualitative_grid: no faces")
    size = faces.image_size
    shown = max(display_size, size)
    scale = shown / size

    def up(x: Tensor) -> Tensor:
        return x if shown == size else F.interpolate(x, size=(shown, shown), mode="bilinear", align_corners=False)

    def points(p: Tensor) -> Tensor:
        # Pixel-index coordinates: pixel centres map as (p + 0.5) * scale - 0.5.
        return (p + 0.5) * scale - 0.5

    image = faces.image[:rows]
    columns: list[list[np.ndarray]] = [[landmark_panel(img, None, None) for img in up(image)]]
    for module in modules.values():
        module = module.eval()
        device = next(module.parameters()).device
        out = module.reconstruct(image.to(device), render=True)
        comp = up(overlay(image.to(device), out.render.image[:, :3], out.render.mask).cpu())
        lms = points(out.face.landmarks_2d.cpu())
        columns.append([landmark_panel(comp[i], lms[i], points(faces.landmarks[i])) for i in range(rows)])
    picture = np.concatenate([np.concatenate(col, axis=0) for col in columns], axis=1)
    return picture, ["input", *modules.keys()]


def plot_mesh(
    vertices: Tensor | np.ndarray,
    triangles: Tensor | np.ndarray,
    colors: Tensor | np.ndarray | None = None,
    max_triangles: int = 20_000,
    views: Sequence[tuple[float, float]] = ((0.0, -90.0), (0.0, -45.0)),
) -> Figure:
    """Draws a mesh with matplotlib 3D polygons (per-face colour = mean vertex colour), rotatable in Jupyter.

    Matplotlib orders polygons by depth (painter's algorithm, no z-buffer): back faces are culled, but occluded
    front-facing interior surfaces (ICT's mouth cavity) can still show through; :func:`render_views` renders
    with msma's z-buffered rasteriser instead.

    Args:
        vertices: (N, 3) positions in mm, model frame (x right, y up, z towards the viewer).
        triangles: (F, 3) vertex indices.
        colors: (N, 3) vertex colours in [0, 1] (default: grey, lit from the viewer). Triangles must be
            counter-clockwise seen from outside (back faces are culled).
        max_triangles: subsample the faces beyond this many (speed).
        views: (elevation, azimuth) pairs in degrees in matplotlib's z-up frame; one panel each
            (azimuth -90: frontal).
    """
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    v = np.asarray(vertices.detach().cpu() if isinstance(vertices, Tensor) else vertices, dtype=np.float64)
    f = np.asarray(triangles.detach().cpu() if isinstance(triangles, Tensor) else triangles, dtype=np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"plot_mesh: vertices must be (N, 3) and triangles (F, 3), got {v.shape} and {f.shape}")
    if len(f) > max_triangles:
        f = f[np.linspace(0, len(f) - 1, max_triangles).astype(np.int64)]
    # Matplotlib 3D is z-up: show the face's y-up model frame as (x, -z, y) (a proper rotation: winding kept).
    p = np.stack([v[:, 0], -v[:, 2], v[:, 1]], axis=1)
    tri = p[f]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True).clip(1e-12)
    if colors is not None:
        c = np.asarray(colors.detach().cpu() if isinstance(colors, Tensor) else colors, dtype=np.float64)
        face_rgb = np.clip(c[f].mean(axis=1), 0.0, 1.0)
    else:
        face_rgb = None
    fig = plt.figure(figsize=(4.5 * len(views), 4.5))
    lo, hi = p.min(axis=0), p.max(axis=0)
    centre, half = (lo + hi) / 2, (hi - lo).max() / 2
    for k, (elev, azim) in enumerate(views):
        e, a = math.radians(elev), math.radians(azim)
        to_viewer = np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
        facing = normals @ to_viewer
        # Back-face culling (counter-clockwise triangles seen from outside): matplotlib sorts polygons by
        # depth (painter's algorithm), so hidden back faces would otherwise show through.
        keep = facing > 0 if (facing > 0).any() else np.ones(len(f), dtype=bool)
        if face_rgb is None:
            rgb = np.repeat(np.clip(0.2 + 0.75 * facing[keep], 0.0, 1.0)[:, None], 3, axis=1)
        else:
            rgb = face_rgb[keep]
        ax = fig.add_subplot(1, len(views), k + 1, projection="3d")
        ax.add_collection3d(Poly3DCollection(tri[keep], facecolors=rgb, edgecolors="none"))
        for setter, c0 in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), centre):
            setter(c0 - half, c0 + half)
        ax.set_box_aspect((1, 1, 1))
        ax.view_init(elev=elev, azim=azim)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


@torch.no_grad()
def render_views(
    module: FaceReconModule,
    params: FaceParams,
    yaws_deg: Sequence[float] = (0.0, 45.0, 90.0),
    image_size: int = 256,
    shading: str = "both",
) -> np.ndarray:
    """Renders a predicted face from several yaw angles with the module's own (z-buffered) renderer.

    The face is centred (translation zeroed), pitch and roll set to 0, the yaw replaced by each value.

    Args:
        module: the network's module (``Reconstructor.module``); its face model and renderer are used.
        params: coefficients of one face (batch of one), e.g. ``Reconstruction.params``.
        yaws_deg: yaw angles in degrees (positive: the face turns towards its left, the camera's right).
        image_size: side of each view in pixels.
        shading: ``"color"`` (albedo x the predicted SH light), ``"geometry"`` (grey, lit from the camera)
            or ``"both"`` (two rows).

    Returns:
        (rows * image_size, len(yaws) * image_size, 3) uint8 picture on a white background.
    """
    from dataclasses import replace

    from msma.viz import landmark_panel

    if shading not in ("color", "geometry", "both"):
        raise ValueError(f"render_views: shading must be 'color', 'geometry' or 'both', got {shading!r}")
    if params.batch_size != 1:
        raise ValueError(f"render_views: expected the coefficients of one face, got a batch of {params.batch_size}")
    device = next(module.parameters()).device
    params = params.to(device)
    n = len(yaws_deg)
    angles = torch.zeros(n, 3, device=device, dtype=params.angles.dtype)
    angles[:, 1] = torch.tensor([math.radians(y) for y in yaws_deg], device=device, dtype=angles.dtype)
    batch = replace(
        params,
        **{g: t.expand(n, -1) for g, t in params.items() if g not in ("angles", "trans")},
        angles=angles,
        trans=torch.zeros(n, 3, device=device, dtype=params.trans.dtype),
    )
    face = module.face_model(batch, image_size=image_size)  # type: ignore[operator]
    tri = module.face_model.tri  # type: ignore[union-attr]
    rows = []
    if shading in ("color", "both"):
        rows.append(module.renderer.render(face, tri))  # type: ignore[operator]
    if shading in ("geometry", "both"):
        grey = (0.2 + 0.75 * face.normals[..., 2:3].clamp_min(0.0)).expand(-1, -1, 3)
        rows.append(module.renderer.render(replace(face, color=grey), tri))  # type: ignore[operator]
    lines = []
    for out in rows:
        img = out.image[:, :3] * out.mask + (1.0 - out.mask)
        lines.append(np.concatenate([landmark_panel(img[i].cpu(), None, None) for i in range(n)], axis=1))
    return np.concatenate(lines, axis=0)


def save_figure(fig: Figure | np.ndarray, path: str | Path, dpi: int = 110) -> Path:
    """Saves a matplotlib figure or an (H, W, 3) uint8 picture as PNG (parent folders created)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(fig, np.ndarray):
        from msma.viz import save_png

        return save_png(fig, out)
    fig.savefig(out, dpi=dpi, bbox_inches="tight")
    return out
