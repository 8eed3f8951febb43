"""msma.analysis: helpers for the notebooks (``pip install msma[analysis]``: pandas, matplotlib).

- settings from the environment (``MSMA_NB_TINY``, ``MSMA_NB_OUT``, ``MSMA_NB_RUNS``: what
  ``scripts/run_notebooks.py`` and the tests pass to the kernel) and run folders: :mod:`msma.analysis.runs`;
- per-face evaluation of several runs on the same synthetic test faces, with AFLW2000-3D yaw bins (the held-out
  evaluator's per-face mode): :mod:`msma.analysis.faces`;
- plots, the qualitative grid, mesh renderings: :mod:`msma.analysis.plots`.

Units: ``nme`` is a fraction of ``sqrt(w*h)`` of the ground-truth landmark box (``nme_pct`` = 100 x ``nme``);
vertex errors in mm.
"""

from msma.analysis.faces import YAW_BIN_LABELS, EvalFaces, evaluate_per_face, load_eval_faces, yaw_bin_table
from msma.analysis.plots import (
    plot_mesh,
    plot_training_curves,
    plot_yaw_bins,
    qualitative_grid,
    render_views,
    save_figure,
)
from msma.analysis.runs import (
    NotebookSettings,
    RunInfo,
    ensure_runs,
    find_runs,
    latest_checkpoint,
    latest_run,
    load_newest,
    load_run_model,
    notebook_settings,
    read_metrics_csv,
    read_metrics_json,
    runs_summary,
    tiny_training_overrides,
    wandb_histories,
)

__all__ = [
    "YAW_BIN_LABELS",
    "EvalFaces",
    "NotebookSettings",
    "RunInfo",
    "ensure_runs",
    "evaluate_per_face",
    "find_runs",
    "latest_checkpoint",
    "latest_run",
    "load_eval_faces",
    "load_newest",
    "load_run_model",
    "notebook_settings",
    "plot_mesh",
    "plot_training_curves",
    "plot_yaw_bins",
    "qualitative_grid",
    "read_metrics_csv",
    "read_metrics_json",
    "render_views",
    "runs_summary",
    "save_figure",
    "tiny_training_overrides",
    "wandb_histories",
    "yaw_bin_table",
]
