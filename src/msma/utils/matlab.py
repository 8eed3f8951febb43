"""Fields of MATLAB ``.mat`` files from users (BFM, 3DDFA annotations) as real numeric arrays, or a ValueError
naming the file and the field: a struct, cell array, string or complex array is never cast silently nor allowed to
escape as a ``TypeError``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def numeric_field(
    mat: Mapping[str, Any], key: str, path: Path, dtype: type[np.floating[Any]] | None = None
) -> np.ndarray:
    """``mat[key]`` as a real ``dtype`` array (None: the stored integer, boolean or float type).

    Raises:
        ValueError: the field is missing or is not a real numeric array (the message names ``path`` and ``key``).
    """
    if key not in mat:
        raise ValueError(f"{path}: missing {key}")
    value = mat[key]
    if isinstance(value, np.ndarray) and (value.dtype.kind not in "biuf"):
        raise ValueError(f"{path}: {key} is not a real numeric array (MATLAB type {_kind(value)})")
    try:
        arr = np.asarray(value, dtype=dtype)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: {key} is not a real numeric array ({exc})") from exc
    return arr


def _kind(value: np.ndarray) -> str:
    if value.dtype.names:
        return "struct"
    if value.dtype.kind == "O":
        return "cell"
    if value.dtype.kind in "US":
        return "char"
    if value.dtype.kind == "c":
        return "complex"
    return str(value.dtype)
