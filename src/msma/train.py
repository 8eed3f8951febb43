"""``msma train --config-name <experiment> [key=value ...]``: Hydra entry point and the training run.

:func:`cli_main` hands its arguments to a ``@hydra.main`` function (config root ``experiments/``), so the whole
Hydra command line works: overrides, ``--cfg job``, ``--info``, ``-m`` multiruns. The run folder is
``runs/<name>/<timestamp>`` (``hydra.run.dir``; set ``MSMA_RUN_ID`` to pin the timestamp part, e.g. to
``$SLURM_JOB_ID`` so that all ranks of a torchrun/SLURM job share one folder). :func:`run_training` does the
work and is what tests and notebooks call with a configuration from :func:`msma.config.compose_experiment`.

A run folder holds ``config.yaml`` (resolved), ``checkpoints/{last,best-*,interrupted}.ckpt``, ``csv/`` (CSV
log), ``wandb/`` (offline unless an account is configured), ``grids/*.png`` and, after the final held-out
evaluation, ``metrics.json``.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and sys.path and sys.path[0] and __file__.startswith(sys.path[0]):
    # Run as a script (Lightning's DDP launcher re-executing `msma train`): do not let the package folder
    # shadow top-level module names.
    sys.path.pop(0)

import importlib.util
import json
import logging
import os
import platform
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import RandomSampler

from msma.config import experiments_dir, register_configs, to_container, validate_config
from msma.preflight import check_inputs

log = logging.getLogger("msma.train")


@dataclass(frozen=True)
class HeldOutMetrics:
    """Landmark and vertex errors on a held-out split.

    Attributes:
        nme: mean 68-point NME (fraction of sqrt(w*h) of the GT landmark box).
        vertex_mm: mean per-vertex error against ground-truth posed vertices in mm, camera frame, no alignment
            (NaN when unavailable).
        vertex_aligned_mm: the same after a per-face rigid alignment (shape error only).
        samples: number of faces evaluated.
    """

    nme: float
    vertex_mm: float
    vertex_aligned_mm: float
    samples: int


@dataclass(frozen=True)
class TrainResult:
    """What :func:`run_training` returns.

    Attributes:
        run_dir: the run folder.
        best_checkpoint: best checkpoint by validation NME ("" when none was written).
        last_checkpoint: ``last.ckpt`` ("" when none was written).
        interrupted: True when training stopped on Ctrl-C / SIGTERM.
        metrics: the content written to ``metrics.json`` (empty when the final evaluation did not run).
        train_losses: the logged training loss of every optimiser step of this process (for tests).
    """

    run_dir: Path
    best_checkpoint: str
    last_checkpoint: str
    interrupted: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    train_losses: tuple[float, ...] = ()


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


def _build_loggers(cfg: DictConfig, run_dir: Path, resolved: dict[str, Any]) -> list[Any]:
    from lightning.pytorch.loggers import CSVLogger

    loggers: list[Any] = [CSVLogger(save_dir=str(run_dir), name="csv", version="")]
    wcfg = cfg.logger.wandb
    if wcfg.enabled:
        mode = resolve_wandb_mode(wcfg.mode)
        if mode != "disabled":
            from lightning.pytorch.loggers import WandbLogger

            loggers.append(
                WandbLogger(
                    name=f"{cfg.name}-{run_dir.name}",
                    save_dir=str(run_dir),
                    project=str(wcfg.project),
                    entity=wcfg.entity,
                    tags=list(wcfg.tags),
                    mode=mode,
                    log_model=bool(wcfg.log_model) and mode == "online",
                    config=resolved,
                )
            )
    return loggers


def _strategy(cfg: DictConfig) -> Any:
    t = cfg.trainer
    name = str(t.strategy)
    if name.startswith("ddp") and (t.process_group_backend or t.find_unused_parameters):
        from lightning.pytorch.strategies import DDPStrategy

        kwargs: dict[str, Any] = {"find_unused_parameters": bool(t.find_unused_parameters)}
        if t.process_group_backend:
            kwargs["process_group_backend"] = str(t.process_group_backend)
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
    if OmegaConf.is_list(value) or isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    raise ValueError(f"trainer.devices must be an int, 'auto' or a list of ids, got {value!r}")


def build_trainer(cfg: DictConfig, run_dir: Path, loggers: list[Any], callbacks: list[Any]) -> Any:
    """The Lightning ``Trainer`` of ``cfg.trainer`` writing into ``run_dir``."""
    from lightning.pytorch import Trainer

    t = cfg.trainer
    if t.sync_batchnorm and str(t.accelerator) == "cpu":
        raise ValueError(
            "trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm is CUDA-only); set it to false on CPU"
        )
    return Trainer(
        accelerator=str(t.accelerator),
        devices=_devices(t.devices),
        num_nodes=int(t.num_nodes),
        strategy=_strategy(cfg),
        sync_batchnorm=bool(t.sync_batchnorm),
        precision=str(t.precision),  # type: ignore[arg-type]
        max_epochs=int(t.max_epochs),
        max_steps=int(t.max_steps),
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches,
        limit_test_batches=t.limit_test_batches,
        val_check_interval=t.val_check_interval,
        check_val_every_n_epoch=t.check_val_every_n_epoch,
        num_sanity_val_steps=int(t.num_sanity_val_steps),
        log_every_n_steps=int(t.log_every_n),
        gradient_clip_val=t.gradient_clip_val,
        accumulate_grad_batches=int(t.accumulate_grad_batches),
        deterministic=bool(t.deterministic),
        benchmark=bool(t.benchmark),
        enable_progress_bar=bool(t.enable_progress_bar),
        default_root_dir=str(run_dir),
        logger=loggers,
        callbacks=callbacks,
    )


class _LossRecorder:
    """Collects the training loss of every step (Lightning callback, built lazily)."""

    @staticmethod
    def make() -> Any:
        from lightning.pytorch import Callback

        class LossRecorder(Callback):
            def __init__(self) -> None:
                self.losses: list[float] = []

            def on_train_batch_end(
                self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
            ) -> None:
                if isinstance(outputs, dict) and "loss" in outputs:
                    self.losses.append(float(outputs["loss"].detach()))
                elif isinstance(outputs, torch.Tensor):
                    self.losses.append(float(outputs.detach()))

        return LossRecorder()


@torch.no_grad()
def evaluate_heldout(
    module: Any, loader: Any, device: torch.device | str = "cpu", mean_face: bool = False
) -> HeldOutMetrics:
    """Landmark NME and per-vertex error of ``module`` (or of the mean face) on a dataloader of FaceBatch.

    Args:
        module: a :class:`msma.module.FaceReconModule`.
        loader: iterable of :class:`msma.data.batch.FaceBatch`.
        device: where to run.
        mean_face: evaluate the untrained prediction (all-zero coefficients: mean face, frontal, centred)
            instead of the encoder.
    """
    from msma.module import aligned_vertex_error_mm, landmark_nme, vertex_error_mm

    module = module.to(device).eval()
    nme_sum, nme_n, v_sum, a_sum, v_n = 0.0, 0, 0.0, 0.0, 0
    for batch in loader:
        batch = batch.to(device)
        size = int(batch.image.shape[-1])
        if mean_face:
            params = module.face_model.layout.zeros(batch.batch_size, device=batch.image.device)
        else:
            params = module.encoder(batch.image)
        face = module.face_model(params, image_size=size)
        valid = batch.landmark_valid
        if bool(valid.any()):
            per = landmark_nme(face.landmarks_2d[valid].float(), batch.landmarks[valid].float())
            nme_sum += float(per.sum())
            nme_n += int(per.numel())
        if batch.vertices is not None and batch.vertices.shape == face.vertices.shape:
            err = vertex_error_mm(face.vertices.float(), batch.vertices.float())
            v_sum += float(err.sum())
            a_sum += float(aligned_vertex_error_mm(face.vertices.float(), batch.vertices.float()).sum())
            v_n += int(err.numel())
    return HeldOutMetrics(
        nme=nme_sum / nme_n if nme_n else float("nan"),
        vertex_mm=v_sum / v_n if v_n else float("nan"),
        vertex_aligned_mm=a_sum / v_n if v_n else float("nan"),
        samples=max(nme_n, v_n),
    )


def _heldout_loader(datamodule: Any) -> Any:
    """The datamodule's test loader, else its validation loader."""
    for stage, getter in (("test", "test_dataloader"), ("validate", "val_dataloader")):
        try:
            datamodule.setup(stage)
            loader = getattr(datamodule, getter)()
        except (NotImplementedError, AttributeError, ValueError, RuntimeError) as err:
            log.info("no %s split for the final evaluation (%s)", stage, err)
            continue
        if loader is not None:
            return loader, stage
    raise ValueError("the datamodule has neither a test nor a validation split for the final evaluation")


class EpochSeededSampler(RandomSampler):
    """A random permutation per epoch drawn from ``(seed, epoch)`` only.

    torch's ``RandomSampler`` draws its seed from the global generator when an epoch's iterator starts, so the
    data order depends on every random draw made before (validation loaders, augmentation, hooks) and a resumed
    run does not see the batches an uninterrupted run would. Lightning calls :meth:`set_epoch` at the start of
    every epoch (as for ``DistributedSampler``, which replaces this sampler under DDP and is epoch-seeded too).
    """

    def __init__(self, data_source: Any, seed: int) -> None:
        super().__init__(data_source)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=gen).tolist()

    def __len__(self) -> int:
        return len(self.data_source)


def with_epoch_seeded_order(loader: Any, seed: int) -> Any:
    """Returns ``loader`` rebuilt with :class:`EpochSeededSampler` when it shuffles with a plain RandomSampler."""
    from torch.utils.data import DataLoader

    if not isinstance(loader, DataLoader) or type(loader.sampler) is not RandomSampler or loader.batch_size is None:
        return loader
    if getattr(loader.sampler, "replacement", False) or getattr(loader.sampler, "_num_samples", None) is not None:
        return loader
    workers = int(loader.num_workers)
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=EpochSeededSampler(loader.dataset, seed),
        num_workers=workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        persistent_workers=loader.persistent_workers if workers > 0 else False,
        prefetch_factor=loader.prefetch_factor if workers > 0 else None,
    )


def pregenerate_synthetic(datamodule: Any) -> None:
    """Generates (or verifies) the cached synthetic shards of every split before training, in this process.

    Without it the first epoch would render them lazily, possibly in several DataLoader workers at once.
    """
    datamodule.setup("fit")
    try:
        datamodule.setup("test")
    except (ValueError, RuntimeError, NotImplementedError) as err:
        log.info("no test split to pre-generate (%s)", err)
    for name in ("train_set", "val_set", "test_set"):
        ds = getattr(datamodule, name, None)
        while ds is not None and not hasattr(ds, "ensure_generated") and hasattr(ds, "dataset"):
            ds = ds.dataset
        if ds is not None and hasattr(ds, "ensure_generated") and getattr(ds, "cache_root", None) is not None:
            t0 = time.perf_counter()
            ds.ensure_generated()
            log.info("synthetic %s ready in %.1f s (%s)", name, time.perf_counter() - t0, ds.cache_root)


def final_evaluation(
    cfg: DictConfig, module: Any, datamodule: Any, best_checkpoint: str, run_dir: Path
) -> dict[str, Any]:
    """Evaluates the best checkpoint (else the final weights) and the mean face on the held-out split,
    prints the comparison and writes ``metrics.json``."""
    from msma.builders import load_checkpoint_file

    if best_checkpoint:
        ckpt = load_checkpoint_file(best_checkpoint)
        module.load_encoder_state(ckpt["state_dict"])
    loader, split = _heldout_loader(datamodule)
    t0 = time.perf_counter()
    trained = evaluate_heldout(module, loader)
    untrained = evaluate_heldout(module, loader, mean_face=True)
    ratio = trained.nme / untrained.nme if untrained.nme > 0 else float("nan")
    metrics: dict[str, Any] = {
        "experiment": str(cfg.name),
        "split": split,
        "weights": best_checkpoint or "final",
        "samples": trained.samples,
        "trained": {
            "nme": trained.nme,
            "vertex_mm": trained.vertex_mm,
            "vertex_aligned_mm": trained.vertex_aligned_mm,
        },
        "untrained_mean_face": {
            "nme": untrained.nme,
            "vertex_mm": untrained.vertex_mm,
            "vertex_aligned_mm": untrained.vertex_aligned_mm,
        },
        "nme_ratio": ratio,
        "target_nme_ratio": float(cfg.target_nme_ratio),
        "nme_target_met": bool(ratio <= float(cfg.target_nme_ratio)),
        "vertex_error_fell": bool(trained.vertex_mm < untrained.vertex_mm),
        "eval_seconds": time.perf_counter() - t0,
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    lines = [
        f"held-out {split} split, {trained.samples} faces ({metrics['weights']}):",
        f"  landmark NME (sqrt(w*h) of GT box): trained {100 * trained.nme:.2f}%  vs  untrained mean face "
        f"{100 * untrained.nme:.2f}%  (ratio {ratio:.3f}, target <= {cfg.target_nme_ratio}: "
        f"{'met' if metrics['nme_target_met'] else 'NOT met'})",
        f"  per-vertex error (camera frame): trained {trained.vertex_mm:.2f} mm  vs  untrained mean face "
        f"{untrained.vertex_mm:.2f} mm",
        f"  per-vertex error (rigidly aligned, shape only): trained {trained.vertex_aligned_mm:.2f} mm  vs  "
        f"untrained mean face {untrained.vertex_aligned_mm:.2f} mm",
        f"  written to {run_dir / 'metrics.json'}",
    ]
    print("\n".join(lines), flush=True)
    return metrics


def run_training(cfg: DictConfig, run_dir: str | Path) -> TrainResult:
    """Trains one composed experiment into ``run_dir`` (see the module docstring for its contents).

    Args:
        cfg: a configuration composed against :class:`msma.config.ExperimentConfig`.
        run_dir: output folder (created).

    Returns:
        :class:`TrainResult`. Ctrl-C / SIGTERM writes ``checkpoints/interrupted.ckpt`` and returns with
        ``interrupted=True`` instead of raising.
    """
    from lightning.pytorch import seed_everything
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.utilities import rank_zero_only

    from msma.builders import build_datamodule, build_face_model, build_module
    from msma.callbacks import ImageGridCallback, InterruptCheckpoint, RngStateCallback

    validate_config(cfg)
    check_inputs(cfg)  # every missing input (BFM, photos, weights) at once, before any work
    run = Path(run_dir).resolve()
    resolved = to_container(cfg)
    if int(getattr(rank_zero_only, "rank", 0)) == 0:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    seed_everything(int(cfg.seed), workers=True)
    face_model = build_face_model(cfg.face_model.name, cfg.face_model.path)
    module = build_module(cfg, face_model=face_model)
    datamodule = build_datamodule(cfg, face_model)
    # Data order as a function of (seed, epoch): exact resume at epoch boundaries (see EpochSeededSampler).
    make_train_loader = datamodule.train_dataloader
    datamodule.train_dataloader = lambda: with_epoch_seeded_order(make_train_loader(), int(cfg.seed))
    if int(getattr(rank_zero_only, "rank", 0)) == 0:
        t_data = time.perf_counter()
        pregenerate_synthetic(datamodule)
        data_seconds = time.perf_counter() - t_data
    else:
        data_seconds = 0.0

    ckpt_dir = run / "checkpoints"
    checkpoint = ModelCheckpoint(
        dirpath=str(ckpt_dir),
        filename="best-{epoch:03d}-{step:07d}",
        monitor="val/nme",
        mode="min",
        save_top_k=1,
        save_last=False,
        auto_insert_metric_name=False,
    )
    # The latest state, after every validation (Lightning's own save_last only refreshes when the top-k
    # checkpoint changed) or every `checkpoint_every_n_steps` optimiser steps.
    every_n = int(cfg.trainer.checkpoint_every_n_steps or 0)
    latest = ModelCheckpoint(
        dirpath=str(ckpt_dir),
        filename="last",
        monitor=None,
        save_top_k=1,
        every_n_train_steps=every_n or None,
        enable_version_counter=False,
    )
    callbacks: list[Any] = [
        checkpoint,
        latest,
        RngStateCallback(),
        InterruptCheckpoint(ckpt_dir),
        ImageGridCallback(
            run / "grids", every_n_steps=int(cfg.trainer.grid_every_n), max_rows=int(cfg.trainer.grid_rows)
        ),
        LearningRateMonitor(logging_interval="step"),
    ]
    recorder = _LossRecorder.make()
    callbacks.append(recorder)
    loggers = _build_loggers(cfg, run, resolved)
    trainer = build_trainer(cfg, run, loggers, callbacks)

    resume = cfg.resume
    if resume and not Path(str(resume)).is_file():
        raise FileNotFoundError(f"resume={resume}: checkpoint file not found")
    interrupted = False
    t0 = time.perf_counter()
    sigint = signal.getsignal(signal.SIGINT)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    except SystemExit:
        # Lightning turns Ctrl-C into SystemExit(1) and SIGTERM into SIGTERMException (a SystemExit) after the
        # InterruptCheckpoint callback ran.
        if not trainer.interrupted:
            raise
        interrupted = True
    finally:
        # Lightning ignores further Ctrl-C while shutting down; give the caller its handler back.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, sigint)
    train_seconds = time.perf_counter() - t0
    interrupted = interrupted or trainer.interrupted
    best = str(checkpoint.best_model_path or "")
    last = str(ckpt_dir / "last.ckpt") if (ckpt_dir / "last.ckpt").is_file() else ""
    if interrupted:
        saved = next((c.saved for c in callbacks if isinstance(c, InterruptCheckpoint)), None)
        print(f"interrupted; checkpoint: {saved}; continue with resume={saved}", flush=True)
        return TrainResult(run, best, last, True, {}, tuple(recorder.losses))

    metrics: dict[str, Any] = {}
    if cfg.final_eval and trainer.is_global_zero:
        metrics = final_evaluation(cfg, module, datamodule, best, run)
        metrics["data_seconds"] = data_seconds
        metrics["train_seconds"] = train_seconds
        metrics["global_step"] = int(trainer.global_step)
        metrics["nonfinite_steps"] = int(module.nonfinite_steps)
        metrics["device"] = _device_description(trainer)
        metrics["torch"] = torch.__version__
        (run / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return TrainResult(run, best, last, False, metrics, tuple(recorder.losses))


def _device_description(trainer: Any) -> str:
    if trainer.strategy.root_device.type == "cuda":
        return torch.cuda.get_device_name(trainer.strategy.root_device)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def _hydra_task(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    result = run_training(cfg, run_dir)
    if result.interrupted:
        raise SystemExit(130)


def cli_main(argv: list[str] | None = None) -> int:
    """``msma train`` entry point: runs the Hydra application with ``argv`` as its command line.

    Example: ``msma train --config-name quickstart trainer.max_steps=100 logger.wandb.mode=disabled``.
    """
    import hydra

    args = list(sys.argv[1:] if argv is None else argv)
    register_configs()
    main_mod = sys.modules.get("__main__")
    spec = getattr(main_mod, "__spec__", None)
    if spec is not None and spec.name == "msma.cli":
        # Lightning's DDP launcher re-executes `python -m <__main__ module> <sys.argv[1:]>` for the other ranks:
        # point it at this module (which has a __main__ block) instead of the sub-command dispatcher.
        main_mod.__spec__ = importlib.util.find_spec("msma.train")  # type: ignore[union-attr]
    old_argv = sys.argv
    # sys.argv[0] is what Lightning runs for the other ranks when __main__ has no spec (the console script).
    sys.argv = [str(Path(__file__).resolve()), *args]
    try:
        app = hydra.main(config_path=str(experiments_dir()), config_name=None, version_base="1.3")(_hydra_task)
        app()
    except SystemExit as exc:
        code = exc.code
        return int(code) if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = old_argv
    return 0


if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:]))
