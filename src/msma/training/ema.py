"""``EncoderEMA``: an exponential moving average of the encoder's weights (Polyak averaging), kept during training.

After every optimiser step ``avg <- decay * avg + (1 - decay) * w`` for each parameter and each buffer of the
encoder (batch-norm running statistics included, so the averaged network needs no extra statistics pass); the
first update copies the weights (``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn``). The
time constant is ``1 / (1 - decay)`` steps (0.99: about 100 steps).

What uses the average: validation during training (so ``val/nme`` and the best checkpoint judge the averaged
network), every checkpoint's ``state_dict`` (so ``msma eval``, ``reconstruct`` and export load it like any
other checkpoint) and the module itself after training. The raw training weights and the averaging count travel
in ``checkpoint["msma_ema"]`` and are restored on ``resume=``, so a resumed run continues exactly.

The face model, renderer and loss networks are frozen and not averaged (only ``encoder.*`` entries change). This is
why Lightning's own ``WeightAveraging`` / ``EMAWeightAveraging`` callback is not used: it averages the whole
LightningModule (the face model's tens of MB of constant buffers, every step) and stores that whole state a second
time in each checkpoint, beside ``FaceReconModule.on_save_checkpoint``'s encoder-only ``state_dict``.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

#: Checkpoint key of the EMA bookkeeping: ``{"decay", "raw", "n_averaged", "last_step"}``.
EMA_KEY = "msma_ema"
#: Prefix of the encoder's entries in the LightningModule's ``state_dict``.
ENCODER_PREFIX = "encoder."


def check_decay(decay: float) -> float:
    """``decay`` as a float, or ``ValueError`` naming ``optim.ema_decay`` when it is not in (0, 1)."""
    value = float(decay)
    if not 0.0 < value < 1.0:
        raise ValueError(f"optim.ema_decay must be in (0, 1) (0 turns the average off), got {decay!r}")
    return value


def _encoder(module: LightningModule) -> nn.Module:
    encoder = getattr(module, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"EncoderEMA needs a LightningModule with an `encoder` submodule, got {type(module).__name__}")
    return encoder


def _tensors(module: nn.Module) -> list[Tensor]:
    return [*module.parameters(), *module.buffers()]


class EncoderEMA(Callback):
    """Keeps the exponential moving average of ``pl_module.encoder`` (see the module docstring).

    Args:
        decay: weight of the old average at each step, in (0, 1).

    Attributes:
        average: the averaged copy (``AveragedModel``; ``average.module`` is an encoder), created when fit starts.
    """

    def __init__(self, decay: float) -> None:
        super().__init__()
        self.decay = check_decay(decay)
        self.average: AveragedModel | None = None
        self._last_step = 0
        self._swapped = False

    # ------------------------------------------------------------------ lifecycle
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and self.average is None:
            self.average = AveragedModel(
                _encoder(pl_module), multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True
            )

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # setup() runs before the strategy moves the module to its device: follow it there.
        if self.average is not None:
            self.average.to(pl_module.device)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Once per optimiser step (with gradient accumulation, not every batch).
        if self.average is not None and trainer.global_step > self._last_step:
            self.average.update_parameters(_encoder(pl_module))
            self._last_step = trainer.global_step

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.average is not None and not self._swapped:
            self._swap(pl_module)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.average is not None and self._swapped:
            self._swap(pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.average is not None:
            with torch.no_grad():
                for mine, avg in zip(_tensors(_encoder(pl_module)), _tensors(self.average.module), strict=True):
                    mine.copy_(avg)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.average is None:
            return
        state = checkpoint["state_dict"]
        raw = {k[len(ENCODER_PREFIX) :]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
        averaged = self.average.module.state_dict()
        if self._swapped:  # saved during validation: the module holds the average, `average` the raw weights
            raw, averaged = averaged, raw
        for name, value in averaged.items():
            state[ENCODER_PREFIX + name] = value.detach().clone()
        checkpoint[EMA_KEY] = {
            "decay": self.decay,
            "raw": {k: v.detach().clone() for k, v in raw.items()},
            "n_averaged": int(self.average.n_averaged.item()),
            "last_step": int(self._last_step),
        }

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """On ``resume=``: the average from ``state_dict``, the raw weights back into the encoder.

        A checkpoint written without EMA starts the average from its weights (the next update copies them).
        """
        if self.average is None:
            return
        saved = checkpoint.get(EMA_KEY)
        if saved is None:
            self.average.n_averaged.zero_()
            return
        state = checkpoint["state_dict"]
        averaged = {k[len(ENCODER_PREFIX) :]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
        self.average.module.load_state_dict(averaged)
        self.average.n_averaged.fill_(int(saved["n_averaged"]))
        _encoder(pl_module).load_state_dict(saved["raw"])
        self._last_step = int(saved["last_step"])

    # ------------------------------------------------------------------ helpers
    @torch.no_grad()
    def _swap(self, pl_module: LightningModule) -> None:
        assert self.average is not None
        for mine, avg in zip(_tensors(_encoder(pl_module)), _tensors(self.average.module), strict=True):
            tmp = mine.detach().clone()
            mine.copy_(avg)
            avg.copy_(tmp)
        self._swapped = not self._swapped
