"""The one progress-bar helper: tqdm on stderr, or a silent stand-in with the same ``update``/``close``."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


class _NullBar:
    """A disabled bar: iterates its iterable, ignores updates."""

    def __init__(self, iterable: Iterable[Any] | None) -> None:
        self.iterable = iterable

    def __iter__(self) -> Any:
        return iter(self.iterable if self.iterable is not None else ())

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(
    iterable: Iterable[Any] | None = None,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool | None = None,
    unit_scale: bool = False,
) -> Any:
    """A tqdm bar on stderr (iterate it, or call ``update(n)`` / ``close()``).

    Args:
        iterable: optional iterable to wrap.
        total: number of items (default ``len(iterable)`` when it has one).
        desc: label.
        unit: item unit.
        enabled: show it; None = only when stderr is a terminal. A disabled bar has the same interface and
            prints nothing.
        unit_scale: print large counts with SI prefixes (bytes of a download).
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return _NullBar(iterable)
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=unit_scale, file=sys.stderr, dynamic_ncols=True)
