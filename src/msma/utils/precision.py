"""``full_precision``: autocast off for the parts of a mixed-precision step that need float32."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Turns autocast off on ``device`` (its type) for the enclosed operations.

    Under bf16 autocast the face model's basis products and the perspective division would run in bfloat16
    (8 significant bits: about 0.4 % of a 10-unit camera distance, several pixels of landmark error at 224), and
    so would the matmuls of the skin model's quadratic forms and of the identity loss's alignment; only the
    encoder runs in mixed precision. Callers cast their inputs to float32 themselves.
    """
    with torch.autocast(device_type=device.type, enabled=False):
        yield
