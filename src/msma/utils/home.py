"""The cache home: ``$MSMA_HOME``, default ``~/.cache/msma`` (converted face models, synthetic data, labels)."""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable naming the cache folder.
ENV_HOME = "MSMA_HOME"


def msma_home() -> Path:
    """The cache directory: ``$MSMA_HOME`` (``~`` expanded) or ``~/.cache/msma``. Not created here."""
    env = os.environ.get(ENV_HOME)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "msma"
