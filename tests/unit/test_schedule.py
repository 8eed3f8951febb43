"""The learning-rate schedule (msma.training.schedule): without warm-up torch's own StepLR / CosineAnnealingLR (the
authors' recipe), with warm-up one LambdaLR whose base part follows those schedulers step for step (the oracle)."""

from __future__ import annotations

import math

import pytest
import torch

from msma.config import OptimConfig
from msma.training.schedule import build_lr_scheduler, lr_factor


def _rates(optim: OptimConfig, steps: int, *, total: int, per_epoch: int) -> list[float]:
    """The rate Adam uses at each of ``steps`` optimiser steps, stepping the scheduler as Lightning does."""
    opt = torch.optim.Adam([torch.zeros(2, requires_grad=True)], lr=optim.lr)
    entry = build_lr_scheduler(opt, optim, total_steps=total, steps_per_epoch=per_epoch)
    rates = []
    for k in range(steps):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        if entry["interval"] == "step" or (k + 1) % per_epoch == 0:
            entry["scheduler"].step()
    return rates


@pytest.mark.parametrize(
    "optim",
    [
        OptimConfig(lr=0.1, scheduler="step", step_size=3, gamma=0.5, interval="step"),
        OptimConfig(lr=0.1, scheduler="step", step_size=2, gamma=0.2, interval="epoch"),
        OptimConfig(lr=0.1, scheduler="cosine"),
    ],
)
def test_base_factor_is_torchs_own_schedule(optim: OptimConfig) -> None:
    """With warm-up 0 msma hands Lightning torch's schedulers; lr_factor's base part reproduces their rates."""
    total, per_epoch = 20, 4
    torch_rates = _rates(optim, total, total=total, per_epoch=per_epoch)
    period = optim.step_size * (per_epoch if optim.interval == "epoch" else 1)
    ours = [
        optim.lr
        * lr_factor(
            k, scheduler=optim.scheduler, gamma=optim.gamma, step_size_steps=period, total_steps=total, warmup_steps=0
        )
        for k in range(total)
    ]
    assert ours == pytest.approx(torch_rates, rel=1e-9, abs=1e-15)
    assert len(set(torch_rates)) > 2  # the schedule moves within the run


@pytest.mark.parametrize("scheduler", ["step", "cosine"])
def test_warmup_rises_linearly_then_follows_the_schedule(scheduler: str) -> None:
    total, per_epoch, warm = 20, 5, 4
    plain = OptimConfig(lr=0.1, scheduler=scheduler, step_size=1, gamma=0.5, interval="epoch")
    warmed = OptimConfig(lr=0.1, scheduler=scheduler, step_size=1, gamma=0.5, interval="epoch", warmup_steps=warm)
    base = _rates(plain, total, total=total, per_epoch=per_epoch)
    rates = _rates(warmed, total, total=total, per_epoch=per_epoch)
    assert rates[:warm] == pytest.approx([base[k] * (k + 1) / warm for k in range(warm)], rel=1e-9)
    assert rates[warm:] == pytest.approx(base[warm:], rel=1e-9, abs=1e-15)
    assert rates[0] == pytest.approx(0.1 / warm)  # a quarter of the rate on the first step


def test_lr_factor_values_and_refusals() -> None:
    kw = {"gamma": 0.2, "step_size_steps": 10, "total_steps": 100, "warmup_steps": 10}
    assert lr_factor(0, scheduler="step", **kw) == pytest.approx(0.1)
    assert lr_factor(9, scheduler="step", **kw) == pytest.approx(1.0)
    assert lr_factor(10, scheduler="step", **kw) == pytest.approx(0.2)
    assert lr_factor(50, scheduler="cosine", **kw) == pytest.approx(0.5)
    assert lr_factor(0, scheduler="cosine", **kw) == pytest.approx(0.1 * (1 + math.cos(0)) / 2)
    with pytest.raises(ValueError, match="step must be"):
        lr_factor(-1, scheduler="step", **kw)
    with pytest.raises(ValueError, match="optim.scheduler"):
        lr_factor(0, scheduler="linear", **kw)
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    with pytest.raises(ValueError, match="finite number of steps"):
        build_lr_scheduler(opt, OptimConfig(scheduler="cosine", warmup_steps=3), total_steps=0, steps_per_epoch=0)
    with pytest.raises(ValueError, match="known number of batches per epoch"):  # an endless / unsized loader
        build_lr_scheduler(opt, OptimConfig(interval="epoch", warmup_steps=3), total_steps=0, steps_per_epoch=0)
    step_interval = OptimConfig(interval="step", warmup_steps=3)  # needs no epoch length
    assert build_lr_scheduler(opt, step_interval, total_steps=0, steps_per_epoch=0)["interval"] == "step"
