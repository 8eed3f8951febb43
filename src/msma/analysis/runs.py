"""Run folders for the notebooks: finding runs, loading their networks, their CSV / ``metrics.json`` / W&B logs.

Paths inside a run folder come from :class:`msma.training.run_dir.RunDir`; W&B is optional and offline-safe
(never raises, never waits on a network that is not there).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd
import torch

from msma.training.run_dir import RunDir

if TYPE_CHECKING:
    from msma.pipeline import FacePipeline

T = TypeVar("T")

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
    run = RunDir(run_dir)
    experiment = run.experiment
    cfg = run.config_path
    if cfg.is_file():
        import yaml

        try:
            data = yaml.safe_load(cfg.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"{cfg}: not valid YAML ({err})") from err
        if isinstance(data, dict) and data.get("name"):
            experiment = str(data["name"])
    best = sorted(run.checkpoints.glob("best*.ckpt"), key=lambda p: p.stat().st_mtime)
    return RunInfo(experiment, run_dir, best[-1] if best else None, run.last_checkpoint)


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
            if RunDir(run_dir).config_path.is_file() or RunDir(run_dir).csv_path.is_file():
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


def load_run_model(run: RunInfo, map_location: str | torch.device = "cpu", attempts: int = 3) -> FacePipeline:
    """The network of a run's best checkpoint (else ``last.ckpt``; encoder + face model + renderer), re-reading
    the run folder when a run still training replaced the file in the meantime.

    Raises:
        FileNotFoundError: the run has no checkpoint (the folder is named).
    """
    from msma.checkpoint import load_inference_model

    for attempt in range(attempts):
        ckpt = _run_info(run.run_dir).checkpoint
        if ckpt is None:
            raise FileNotFoundError(f"{run.run_dir}: no checkpoint (checkpoints/best*.ckpt or last.ckpt)")
        try:
            return load_inference_model(ckpt, map_location=map_location)
        except FileNotFoundError:
            if ckpt.is_file() or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def tiny_training_overrides(synthetic_cache_dir: str | Path) -> list[str]:
    """The notebooks' tiny mode: :func:`msma.config.tiny_overrides` with 4 training faces and 2 epochs."""
    from msma.config import tiny_overrides

    return tiny_overrides(synthetic_cache_dir, steps=4, epochs=2, image_size=32, train_samples=4, small_encoder=True)


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
    from msma.training.run import run_training

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
    (``train/loss``, ``val/nme`` (fraction), ``val/vertex_posed_mm`` (mm), ...).

    Raises:
        FileNotFoundError: the run has no CSV log (the path is named).
        ValueError: the file has no ``step`` column.
    """
    run_dir = run.run_dir if isinstance(run, RunInfo) else Path(run)
    path = RunDir(run_dir).csv_path if run_dir.is_dir() else run_dir
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
    return RunDir(run.run_dir if isinstance(run, RunInfo) else Path(run)).read_metrics()


def runs_summary(runs: Sequence[RunInfo]) -> pd.DataFrame:
    """One row per run: the last logged training loss and validation metrics (CSV), and ``metrics.json``.

    Columns: ``run``, ``experiment``, ``steps``, ``train_loss``, ``val_nme_pct``, ``val_vertex_posed_mm``
    (camera frame), ``val_vertex_aligned_mm`` (rigidly aligned; NaN where not logged), ``heldout_nme_pct``,
    ``heldout_vertex_posed_mm``, ``heldout_vertex_aligned_mm``, ``mean_face_nme_pct``, ``nme_ratio`` (NaN
    without ``metrics.json``). NME in percent, vertex errors in mm (:mod:`msma.evaluation.heldout`).
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
        row["val_vertex_posed_mm"] = last("val/vertex_posed_mm")
        row["val_vertex_aligned_mm"] = last("val/vertex_aligned_mm")
        js = read_metrics_json(run) or {}
        trained = js.get("trained", {})
        mean_face = js.get("untrained_mean_face", {})
        row["heldout_nme_pct"] = 100.0 * float(trained.get("nme", math.nan))
        row["heldout_vertex_posed_mm"] = float(trained.get("vertex_posed_mm", math.nan))
        row["heldout_vertex_aligned_mm"] = float(trained.get("vertex_aligned_mm", math.nan))
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
