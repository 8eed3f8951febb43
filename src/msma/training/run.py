"""One training run: :func:`run_training` (what ``msma train``, the tests and the notebooks call).

The configuration is converted once into :class:`msma.config.ExperimentConfig` dataclasses; every part is
built from its typed group (encoder, face model, renderer, loss, datamodule, trainer, loggers, callbacks);
the run folder is written through :class:`msma.training.run_dir.RunDir`; after training, the best checkpoint
and the untrained mean face are evaluated on the held-out split by :func:`msma.evaluation.heldout.evaluate`
(the evaluator of validation and ``msma eval``) and ``metrics.json`` is written.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from msma.config import ExperimentConfig, to_container, to_typed, validate_config
from msma.data.datamodule import FaceDataModule
from msma.preflight import check_inputs
from msma.training.module import FaceReconModule
from msma.training.run_dir import RunDir
from msma.utils.cores import cpu_count, cpu_name

log = logging.getLogger("msma.train")


@dataclass(frozen=True)
class TrainResult:
    """What :func:`run_training` returns.

    Attributes:
        run_dir: the run folder.
        best_checkpoint: best checkpoint by validation NME ("" when none was written).
        last_checkpoint: ``last.ckpt`` ("" when none was written).
        interrupted: True when training stopped on Ctrl-C / SIGTERM.
        metrics: the content written to ``metrics.json`` (empty when the final evaluation did not run).
        train_losses: the logged training loss of every optimiser step of this process.
    """

    run_dir: Path
    best_checkpoint: str
    last_checkpoint: str
    interrupted: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    train_losses: tuple[float, ...] = ()


def final_report(
    cfg: ExperimentConfig, module: FaceReconModule, datamodule: FaceDataModule, best_checkpoint: str
) -> dict[str, Any]:
    """Evaluates the best checkpoint (else the final weights) and the untrained mean face on the held-out split
    (:meth:`FaceDataModule.heldout_dataloader`) and prints the comparison; returns the ``metrics.json`` content.
    """
    from msma.checkpoint import encoder_state, load_checkpoint_file
    from msma.evaluation.heldout import evaluate

    if best_checkpoint:
        ckpt = load_checkpoint_file(best_checkpoint)
        module.encoder.load_state_dict(encoder_state(ckpt["state_dict"], best_checkpoint), strict=True)
    module.eval()
    device = next(module.encoder.parameters()).device
    loader, split = datamodule.heldout_dataloader()
    t0 = time.perf_counter()
    trained = evaluate(module.encoder, module.face_model, loader, device)
    untrained = evaluate(None, module.face_model, loader, device)
    ratio = trained["nme"] / untrained["nme"] if untrained["nme"] > 0 else float("nan")
    metrics: dict[str, Any] = {
        "experiment": cfg.name,
        "split": split,
        "weights": best_checkpoint or "final",
        "samples": trained.count,
        "trained": dict(trained.values),
        "untrained_mean_face": dict(untrained.values),
        "nme_ratio": ratio,
        "target_nme_ratio": cfg.target_nme_ratio,
        "nme_target_met": bool(ratio <= cfg.target_nme_ratio),
        "vertex_error_fell": bool(trained["vertex_posed_mm"] < untrained["vertex_posed_mm"]),
        "eval_seconds": time.perf_counter() - t0,
    }
    print(
        "\n".join(
            [
                f"held-out {split} split, {trained.count} faces ({metrics['weights']}):",
                f"  landmark NME (sqrt(w*h) of GT box): trained {100 * trained['nme']:.2f}%  vs  untrained mean "
                f"face {100 * untrained['nme']:.2f}%  (ratio {ratio:.3f}, target <= {cfg.target_nme_ratio}: "
                f"{'met' if metrics['nme_target_met'] else 'NOT met'})",
                f"  vertex_posed_mm (camera frame): trained {trained['vertex_posed_mm']:.2f} mm  vs  untrained "
                f"mean face {untrained['vertex_posed_mm']:.2f} mm",
                f"  vertex_aligned_mm (rigidly aligned, shape only): trained {trained['vertex_aligned_mm']:.2f} mm"
                f"  vs  untrained mean face {untrained['vertex_aligned_mm']:.2f} mm",
            ]
        ),
        flush=True,
    )
    return metrics


def _check_resume(resume: str) -> None:
    """Raises FileNotFoundError / ValueError naming ``resume=`` when it is not a readable msma checkpoint."""
    from msma.checkpoint import load_checkpoint_file

    if not Path(resume).is_file():
        raise FileNotFoundError(f"resume={resume}: checkpoint file not found")
    try:
        load_checkpoint_file(resume)
    except ValueError as err:
        raise ValueError(
            f"resume={resume}: cannot continue from it ({err}). Resume from the run's checkpoints/last.ckpt or "
            "interrupted.ckpt, or drop resume= to start afresh."
        ) from err


def run_training(cfg: DictConfig, run_dir: str | Path, extra_callbacks: Sequence[Any] = ()) -> TrainResult:
    """Trains one composed experiment into ``run_dir`` (layout: :mod:`msma.training.run_dir`).

    Args:
        cfg: a configuration composed against :class:`msma.config.ExperimentConfig`.
        run_dir: output folder (created).
        extra_callbacks: Lightning callbacks added after the standard ones
            (:func:`msma.training.trainer.build_callbacks`).

    Returns:
        :class:`TrainResult`. Ctrl-C / SIGTERM writes ``checkpoints/interrupted.ckpt`` and returns with
        ``interrupted=True`` instead of raising.
    """
    from lightning.pytorch import seed_everything
    from lightning.pytorch.utilities import rank_zero_only

    from msma.builders import build_face_model
    from msma.training.callbacks import TrainLossHistory
    from msma.training.checkpoint import build_module
    from msma.training.trainer import build_callbacks, build_loggers, build_trainer

    validate_config(cfg)
    check_inputs(cfg)  # every missing input (BFM, photos, weights) at once, before any work
    resolved = to_container(cfg)
    typed = to_typed(cfg)
    resume = typed.resume
    if resume:  # a missing or unreadable (truncated, foreign) checkpoint is named before any work
        _check_resume(resume)
    run = RunDir(Path(run_dir).resolve())
    rank_zero = int(getattr(rank_zero_only, "rank", 0)) == 0
    if rank_zero:
        run.create()
        run.write_config(OmegaConf.to_yaml(OmegaConf.create(resolved)))
    if typed.num_threads:
        torch.set_num_threads(typed.num_threads)
    seed_everything(typed.seed, workers=True)
    face_model = build_face_model(typed.face_model.name, typed.face_model.path)
    module = build_module(typed, face_model=face_model)
    datamodule = FaceDataModule(typed.data, face_model)
    callbacks, ckpts = build_callbacks(typed.trainer, run, ema_decay=typed.optim.ema_decay)
    callbacks += list(extra_callbacks)
    history = next(c for c in callbacks if isinstance(c, TrainLossHistory))
    trainer = build_trainer(typed.trainer, run, build_loggers(typed.logger, run, typed.name, resolved), callbacks)

    interrupted = False
    t0 = time.perf_counter()
    sigint = signal.getsignal(signal.SIGINT)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume or None)
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
    train_seconds = time.perf_counter() - t0 - datamodule.prepare_seconds
    interrupted = interrupted or trainer.interrupted
    best = str(ckpts.best.best_model_path or "")
    last = str(run.last_checkpoint or "")
    if interrupted:
        saved = ckpts.interrupt.saved
        print(f"interrupted; checkpoint: {saved}; continue with resume={saved}", flush=True)
        return TrainResult(run.path, best, last, True, {}, tuple(history.losses))

    metrics: dict[str, Any] = {}
    if typed.final_eval and trainer.is_global_zero:
        metrics = final_report(typed, module, datamodule, best)
        metrics["data_seconds"] = datamodule.prepare_seconds
        metrics["train_seconds"] = train_seconds
        metrics["global_step"] = int(trainer.global_step)
        metrics["nonfinite_steps"] = int(module.nonfinite_steps)
        metrics["device"] = _device_description(trainer)
        metrics["torch"] = torch.__version__
        photos = _photos_root(typed.photos_root)
        if photos is not None and best:
            metrics["photos"] = photo_report(best, photos)
        path = run.write_metrics(metrics)
        print(f"  written to {path}", flush=True)
    return TrainResult(run.path, best, last, False, metrics, tuple(history.losses))


def _photos_root(setting: str | None) -> Path | None:
    """The photo folder of ``photos_root`` (``"auto"``: ``$MSMA_SHARED/testdata`` if present), or None."""
    if not setting:
        return None
    if setting == "auto":
        shared = os.environ.get("MSMA_SHARED")
        cand = Path(shared) / "testdata" if shared else None
        return cand if cand is not None and cand.is_dir() else None
    path = Path(setting)
    if not path.is_dir():
        raise FileNotFoundError(f"photos_root={setting}: not a folder of labelled photos")
    return path


def photo_report(checkpoint: str, root: Path) -> dict[str, Any]:
    """Scores ``checkpoint`` and the mean face on the labelled photos under ``root`` and prints the table."""
    from msma.evaluation.photos import evaluate_photos
    from msma.evaluation.report import format_table

    result = evaluate_photos(checkpoint, root)
    print(f"labelled photos under {root} (detection + 5-point alignment, as msma reconstruct):", flush=True)
    print(format_table("photos", result), flush=True)
    return result


def _device_description(trainer: Any) -> str:
    if trainer.strategy.root_device.type == "cuda":
        return str(torch.cuda.get_device_name(trainer.strategy.root_device))
    return f"{cpu_name()}, {cpu_count()} cores, {torch.get_num_threads()} torch threads"
