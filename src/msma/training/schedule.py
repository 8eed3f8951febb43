"""The learning-rate schedule of :class:`msma.config.OptimConfig`: a factor of ``optim.lr`` per optimiser step.

Without warm-up msma hands Lightning torch's own schedulers (``StepLR`` per ``optim.interval``, ``CosineAnnealingLR``
per step), exactly the authors' recipe. With ``optim.warmup_steps = W > 0`` the whole schedule becomes one
``LambdaLR`` stepped after every optimiser step, whose factor at 0-based step ``k`` is

    min(1, (k + 1) / W) * base(k),   base(k) = gamma ** (k // step_size_steps)   (``scheduler: step``)
                                             = (1 + cos(pi * k / total_steps)) / 2 (``scheduler: cosine``)

``step_size_steps`` is ``step_size`` itself for ``interval: step`` and ``step_size`` epochs' worth of optimiser steps
for ``interval: epoch``; the cosine is the closed form of ``CosineAnnealingLR`` with ``eta_min = 0``. Added for the
device check's 144-step bf16 run at ``lr = 2e-4``, which spiked near step 100 in 2 of 6 runs (docs/gpu.md, runs
4-9); with a 24-step warm-up it did not become reliable (run 10), so no shipped recipe uses it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from msma.config import OptimConfig


def lr_factor(
    step: int,
    *,
    scheduler: str,
    gamma: float,
    step_size_steps: int,
    total_steps: int,
    warmup_steps: int,
) -> float:
    """The multiplier of ``optim.lr`` at optimiser step ``step`` (0-based; formula in the module docstring).

    Args:
        step: optimiser steps taken before this one.
        scheduler: ``"step"`` or ``"cosine"``.
        gamma: StepLR factor (``scheduler: step``).
        step_size_steps: StepLR period in optimiser steps (``scheduler: step``), >= 1.
        total_steps: the run's optimiser steps (``scheduler: cosine``), >= 1.
        warmup_steps: linear warm-up length in optimiser steps (0 = none).
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if scheduler == "cosine":
        return warm * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps)) / 2.0
    if scheduler == "step":
        return warm * gamma ** (step // step_size_steps)
    raise ValueError(f"optim.scheduler must be 'step' or 'cosine', got {scheduler!r}")


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, *, total_steps: int, steps_per_epoch: int
) -> dict[str, Any]:
    """Lightning's ``lr_scheduler`` entry for ``optimizer`` under ``optim``.

    Args:
        optimizer: the Adam of the encoder, at ``optim.lr``.
        optim: the optimiser settings (checked by :func:`msma.training.module.check_optim`).
        total_steps: the run's optimiser steps (Lightning's ``estimated_stepping_batches``); used by ``cosine``.
        steps_per_epoch: optimiser steps per epoch; used by ``step`` with ``interval: epoch`` under a warm-up.

    Returns:
        ``{"scheduler", "interval", "frequency"}``.
    """
    if optim.scheduler == "cosine" and total_steps < 1:
        raise ValueError("optim.scheduler=cosine needs a finite number of steps (trainer.max_epochs or max_steps)")
    if optim.warmup_steps == 0:
        if optim.scheduler == "cosine":
            cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
            return {"scheduler": cosine, "interval": "step", "frequency": 1}
        sched = torch.optim.lr_scheduler.StepLR(optimizer, step_size=optim.step_size, gamma=optim.gamma)
        return {"scheduler": sched, "interval": optim.interval, "frequency": 1}
    if optim.interval == "epoch" and optim.scheduler == "step" and steps_per_epoch < 1:
        raise ValueError(
            "optim.warmup_steps with an epoch-interval StepLR needs a known number of batches per epoch "
            "(a sized training set); use optim.interval=step"
        )
    period = optim.step_size * (steps_per_epoch if optim.interval == "epoch" else 1)
    total = max(1, total_steps)

    def factor(step: int) -> float:
        return lr_factor(
            step,
            scheduler=optim.scheduler,
            gamma=optim.gamma,
            step_size_steps=period,
            total_steps=total,
            warmup_steps=optim.warmup_steps,
        )

    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step", "frequency": 1}
