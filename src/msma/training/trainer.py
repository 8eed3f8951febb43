"""The Lightning ``Trainer`` of an experiment: loggers (CSV + W&B), strategy, callbacks."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msma.config import LoggerConfig, TrainerConfig
from msma.training.run_dir import RunDir


def resolve_wandb_mode(configured: str | None) -> str:
    """W&B mode: ``configured`` if set, else ``WANDB_MODE``, else online only if an account is configured."""
    if configured:
        if configured not in ("online", "offline", "disabled"):
            raise ValueError(f"logger.wandb.mode must be online, offline or disabled, got {configured!r}")
        return configured
    env = os.environ.get("WANDB_MODE")
    if env:
        return "offline" if env == "dryrun" else env
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    try:
        if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
            return "online"
    except OSError:
        pass
    return "offline"


def build_loggers(cfg: LoggerConfig, run: RunDir, experiment: str, resolved: dict[str, Any]) -> list[Any]:
    """CSV (always, ``<run>/csv``) and W&B (``cfg.wandb``; offline unless an account is configured)."""
    from lightning.pytorch.loggers import CSVLogger

    loggers: list[Any] = [CSVLogger(save_dir=str(run.path), name=run.csv_dir.name, version="")]
    w = cfg.wandb
    if w.enabled:
        mode = resolve_wandb_mode(w.mode)
        if mode != "disabled":
            from lightning.pytorch.loggers import WandbLogger

            loggers.append(
                WandbLogger(
                    name=f"{experiment}-{run.name}",
                    save_dir=str(run.path),
                    project=w.project,
                    entity=w.entity,
                    tags=list(w.tags),
                    mode=mode,
                    log_model=w.log_model and mode == "online",
                    config=resolved,
                )
            )
    return loggers


def _strategy(t: TrainerConfig) -> Any:
    name = t.strategy
    if name.startswith("ddp") and (t.process_group_backend or t.find_unused_parameters):
        from lightning.pytorch.strategies import DDPStrategy

        kwargs: dict[str, Any] = {"find_unused_parameters": t.find_unused_parameters}
        if t.process_group_backend:
            kwargs["process_group_backend"] = t.process_group_backend
        if name == "ddp_spawn":
            kwargs["start_method"] = "spawn"
        elif name != "ddp":
            raise ValueError(
                f"trainer.process_group_backend/find_unused_parameters need strategy ddp or ddp_spawn, got {name!r}"
            )
        return DDPStrategy(**kwargs)
    return name


def _devices(value: Any) -> int | str | list[int]:
    if isinstance(value, (int, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    raise ValueError(f"trainer.devices must be an int, 'auto' or a list of ids, got {value!r}")


@dataclass(frozen=True)
class Checkpoints:
    """The checkpoint callbacks of a run (to read the best path and the interruption file afterwards).

    Attributes:
        best: top-1 by ``val/nme`` (``best-<epoch>-<step>.ckpt``).
        last: the latest state (``last.ckpt``).
        interrupt: writes ``interrupted.ckpt`` on Ctrl-C / SIGTERM.
    """

    best: Any
    last: Any
    interrupt: Any


def build_callbacks(t: TrainerConfig, run: RunDir, ema_decay: float = 0.0) -> tuple[list[Any], Checkpoints]:
    """The callbacks of ``msma train``: the encoder's weight average (``ema_decay`` > 0, first, so that validation
    and every checkpoint see the average), checkpoints, RNG state, interruption checkpoint, image grids, LR monitor,
    the training-loss history."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from msma.training.callbacks import ImageGridCallback, InterruptCheckpoint, RngStateCallback, TrainLossHistory

    best = ModelCheckpoint(
        dirpath=str(run.checkpoints),
        filename="best-{epoch:03d}-{step:07d}",
        monitor="val/nme",
        mode="min",
        save_top_k=1,
        save_last=False,
        auto_insert_metric_name=False,
    )
    # The latest state, after every validation (Lightning's own save_last only refreshes when the top-k
    # checkpoint changed) or every `checkpoint_every_n_steps` optimiser steps.
    last = ModelCheckpoint(
        dirpath=str(run.checkpoints),
        filename="last",
        monitor=None,
        save_top_k=1,
        every_n_train_steps=t.checkpoint_every_n_steps or None,
        enable_version_counter=False,
    )
    interrupt = InterruptCheckpoint(run.checkpoints)
    callbacks: list[Any] = []
    if ema_decay:
        from msma.training.ema import EncoderEMA

        callbacks.append(EncoderEMA(ema_decay))
    callbacks += [
        best,
        last,
        RngStateCallback(),
        interrupt,
        ImageGridCallback(run.grids, every_n_steps=t.grid_every_n, max_rows=t.grid_rows),
        LearningRateMonitor(logging_interval="step"),
        TrainLossHistory(),
    ]
    return callbacks, Checkpoints(best, last, interrupt)


#: TrainerConfig fields that are msma's own (callbacks, strategy options), not ``Trainer`` arguments.
_MSMA_TRAINER_FIELDS = (
    "process_group_backend",
    "find_unused_parameters",
    "log_every_n",
    "grid_every_n",
    "grid_rows",
    "checkpoint_every_n_steps",
)


def build_trainer(t: TrainerConfig, run: RunDir, loggers: list[Any], callbacks: list[Any]) -> Any:
    """The Lightning ``Trainer`` of ``t`` writing into ``run``.

    Every :class:`TrainerConfig` field that is not msma's own is passed to ``Trainer`` under its own name (the
    schema mirrors ``Trainer``'s arguments), so a field added to the schema reaches the trainer without a copy here.
    """
    from lightning.pytorch import Trainer

    if t.sync_batchnorm and t.accelerator == "cpu":
        raise ValueError(
            "trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm is CUDA-only); set it to false on CPU"
        )
    kwargs = {k: v for k, v in dataclasses.asdict(t).items() if k not in _MSMA_TRAINER_FIELDS}
    kwargs.update(devices=_devices(t.devices), strategy=_strategy(t), log_every_n_steps=t.log_every_n)
    return Trainer(**kwargs, default_root_dir=str(run.path), logger=loggers, callbacks=callbacks)
