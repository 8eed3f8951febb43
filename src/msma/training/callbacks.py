"""Lightning callbacks of ``msma train``: image grids, RNG state in checkpoints, checkpoint on interruption.

All file writes happen on global rank 0 only.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger

from msma.data.batch import FaceBatch
from msma.training.module import FaceReconModule
from msma.viz import make_grid, save_png

log = logging.getLogger(__name__)


def _log_picture(trainer: Trainer, key: str, picture: np.ndarray, step: int) -> None:
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[picture], step=step)


class ImageGridCallback(Callback):
    """Every ``every_n_steps`` optimiser steps (and after each validation), writes the grid
    ``input | rendered overlay | landmarks (pred red, target green)`` as PNG under ``out_dir`` and logs it to W&B.

    Args:
        out_dir: folder of the PNGs (``<run>/grids``).
        every_n_steps: training grids every N optimiser steps (0: only validation grids).
        max_rows: faces per grid.
    """

    def __init__(self, out_dir: str | Path, every_n_steps: int = 500, max_rows: int = 6) -> None:
        super().__init__()
        self.out_dir = Path(out_dir)
        self.every_n_steps = int(every_n_steps)
        self.max_rows = int(max_rows)
        self.written: list[Path] = []
        self._last_step = -1

    @torch.no_grad()
    def _picture(self, module: FaceReconModule, batch: FaceBatch) -> np.ndarray:
        was_training = module.training
        module.eval()
        try:
            n = min(batch.batch_size, self.max_rows)
            out = module.reconstruct(batch.image[:n])
            assert out.render is not None
        finally:
            module.train(was_training)
        return make_grid(
            batch.image[:n],
            out.render.image,
            out.render.mask,
            out.face.landmarks_2d,
            batch.landmarks[:n],
            max_rows=self.max_rows,
        )

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps <= 0 or step == self._last_step or step % self.every_n_steps != 0:
            return
        self._last_step = step
        if not trainer.is_global_zero or not isinstance(batch, FaceBatch):
            return
        assert isinstance(pl_module, FaceReconModule)
        picture = self._picture(pl_module, batch)
        path = save_png(picture, self.out_dir / f"train_step{step:07d}.png")
        self.written.append(path)
        _log_picture(trainer, "grid/train", picture, step)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        example = getattr(pl_module, "last_val_example", None)
        if example is None:
            return
        batch, out = example
        n = min(batch.batch_size, self.max_rows)
        picture = make_grid(
            batch.image[:n].cpu(),
            out.render.image[:n].cpu(),
            out.render.mask[:n].cpu(),
            out.face.landmarks_2d[:n].cpu(),
            batch.landmarks[:n].cpu(),
            max_rows=self.max_rows,
        )
        path = save_png(picture, self.out_dir / f"val_step{trainer.global_step:07d}.png")
        self.written.append(path)
        _log_picture(trainer, "grid/val", picture, trainer.global_step)


class RngStateCallback(Callback):
    """Stores the Python, NumPy and torch (CPU + CUDA) RNG states in checkpoints and restores them on resume.

    Lightning restores the model, optimiser, scheduler and loop counters but not the global RNGs, which decide
    the shuffling order of the next epoch (``RandomSampler`` draws its seed from torch's global generator),
    worker seeds and random augmentation. Together with end-of-epoch checkpoints this makes a resumed run
    continue exactly like an uninterrupted one. States are stored as tensors / ints (``weights_only`` safe).

    The restored states are applied in ``on_train_start``, i.e. after the sanity-check validation (whose
    dataloader iterator draws from the global generator), right where the uninterrupted run stood when the
    checkpoint was written.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pending: dict[str, Any] | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._pending is not None:
            self._apply(self._pending)
            self._pending = None

    def state_dict(self) -> dict[str, Any]:
        np_state: tuple[Any, ...] = tuple(np.random.get_state())  # noqa: NPY002 - the legacy global state is what we save
        py_state = random.getstate()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "numpy_pos": int(np_state[2]),
            "numpy_has_gauss": int(np_state[3]),
            "numpy_gauss": float(np_state[4]),
            "python_version": int(py_state[0]),
            "python_state": torch.tensor(py_state[1], dtype=torch.int64),
            "python_gauss": None if py_state[2] is None else float(py_state[2]),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)

    @staticmethod
    def _apply(state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"].cpu())
        keys = state_dict["numpy_keys"].cpu().numpy().astype(np.uint32)
        np.random.set_state(  # noqa: NPY002 - restores the legacy global state
            (
                "MT19937",
                keys,
                int(state_dict["numpy_pos"]),
                int(state_dict["numpy_has_gauss"]),
                float(state_dict["numpy_gauss"]),
            )
        )
        py = tuple(int(v) for v in state_dict["python_state"].tolist())
        random.setstate((int(state_dict["python_version"]), py, state_dict["python_gauss"]))
        cuda = state_dict.get("cuda")
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


class InterruptCheckpoint(Callback):
    """On Ctrl-C (KeyboardInterrupt) or SIGTERM, writes ``<dirpath>/interrupted.ckpt`` (rank 0) before exiting.

    Resume with ``resume=<that file>``. A checkpoint taken mid-epoch restarts that epoch's data order
    (Lightning warns about it); end-of-epoch checkpoints (``last.ckpt``) continue exactly.
    """

    def __init__(self, dirpath: str | Path) -> None:
        super().__init__()
        self.dirpath = Path(dirpath)
        self.saved: Path | None = None

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (KeyboardInterrupt, SystemExit)):
            return
        if not trainer.is_global_zero or trainer.state.fn is None or trainer.global_step == 0:
            return
        path = self.dirpath / "interrupted.ckpt"
        try:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
            trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, path)
        except Exception as err:
            log.error("could not write %s on interruption: %s", path, err)
            return
        self.saved = path
        log.warning("interrupted at step %d: checkpoint written to %s (resume=%s)", trainer.global_step, path, path)


class TrainLossHistory(Callback):
    """Keeps the training loss of every optimiser step of this process (``TrainResult.train_losses``)."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: list[float] = []

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if isinstance(outputs, dict) and "loss" in outputs:
            self.losses.append(float(outputs["loss"].detach()))
        elif isinstance(outputs, torch.Tensor):
            self.losses.append(float(outputs.detach()))
