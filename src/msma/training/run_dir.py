"""``RunDir``: the one writer and reader of a run folder ``runs/<experiment>/<run id>/``.

Layout::

    config.yaml                 the resolved configuration
    checkpoints/                best-<epoch>-<step>.ckpt (top-1 by val/nme), last.ckpt, interrupted.ckpt
    csv/metrics.csv             Lightning's CSV log (every logged scalar)
    wandb/                      W&B files (offline unless an account is configured)
    grids/*.png                 input | rendered overlay | landmarks
    metrics.json                the end-of-training held-out report
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msma.utils.files import atomic_write_text

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"
CSV_DIR = "csv"
GRID_DIR = "grids"
LAST_CHECKPOINT = "last.ckpt"
INTERRUPTED_CHECKPOINT = "interrupted.ckpt"


@dataclass(frozen=True)
class RunDir:
    """A run folder (paths only; nothing is created until written).

    Attributes:
        path: the folder, ``runs/<experiment>/<run id>``.
    """

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def name(self) -> str:
        """The run id (the folder name)."""
        return self.path.name

    @property
    def experiment(self) -> str:
        """The experiment name (the parent folder's name)."""
        return self.path.parent.name

    # ------------------------------------------------------------------ paths
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def csv_dir(self) -> Path:
        return self.path / CSV_DIR

    @property
    def csv_path(self) -> Path:
        return self.csv_dir / "metrics.csv"

    @property
    def grids(self) -> Path:
        return self.path / GRID_DIR

    @property
    def last_checkpoint(self) -> Path | None:
        """``checkpoints/last.ckpt`` when it exists."""
        p = self.checkpoints / LAST_CHECKPOINT
        return p if p.is_file() else None

    # ------------------------------------------------------------------ writing
    def create(self) -> RunDir:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def write_config(self, yaml_text: str) -> Path:
        """Writes ``config.yaml`` (atomically)."""
        return atomic_write_text(self.config_path, yaml_text)

    def write_metrics(self, metrics: dict[str, Any]) -> Path:
        """Writes ``metrics.json`` (atomically)."""
        return atomic_write_text(self.metrics_path, json.dumps(metrics, indent=2) + "\n")

    # ------------------------------------------------------------------ reading
    def read_metrics(self) -> dict[str, Any] | None:
        """``metrics.json`` as a dict, or None when the run has none.

        Raises:
            ValueError: the file exists but is not a JSON object (the path is named).
        """
        path = self.metrics_path
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object")
        return data
