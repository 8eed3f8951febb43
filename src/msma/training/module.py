"""``FaceReconModule``: the LightningModule that wires encoder -> face model -> renderer -> losses.

Orchestration only: the forward pass is :func:`msma.pipeline.reconstruct`, the loss math lives in
:mod:`msma.losses`, the held-out metrics in :mod:`msma.evaluation.heldout` (the same evaluator as
``metrics.json`` and ``msma eval``), the optimiser settings in :class:`msma.config.OptimConfig`.

Only the encoder's weights are trainable and stored in checkpoints: the face model (tens of MB of buffers), the
renderer and the loss networks (e.g. a frozen face-recognition net) are rebuilt from the configuration, so their
tensors are dropped from ``checkpoint["state_dict"]`` on save and filled back from the live module on load.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor
from torchmetrics import MeanMetric

from msma.checkpoint import CONFIG_KEY, NON_PERSISTENT_PREFIXES
from msma.config import OptimConfig
from msma.data.batch import FaceBatch
from msma.data.input_augment import InputAugment
from msma.evaluation.heldout import HeldOutMetrics, face_region_mask
from msma.face_model.model import FaceModel
from msma.face_model.params import CoeffLayout, FaceParams
from msma.losses.total import FaceReconLoss, LossOutput
from msma.models.encoder import FaceEncoder
from msma.pipeline import StepOutput, reconstruct
from msma.render.renderer import MeshRenderer
from msma.training.ema import check_decay
from msma.training.schedule import build_lr_scheduler
from msma.utils.precision import full_precision


def check_optim(optim: OptimConfig) -> None:
    """Raises ``ValueError`` naming the field when the optimiser settings are not usable."""
    if optim.scheduler not in ("step", "cosine"):
        raise ValueError(f"optim.scheduler must be 'step' or 'cosine', got {optim.scheduler!r}")
    if optim.ema_decay != 0:
        check_decay(optim.ema_decay)
    if optim.fused not in (None, True, False):
        raise ValueError(f"optim.fused must be null, true or false, got {optim.fused!r}")
    if optim.interval not in ("epoch", "step"):
        raise ValueError(f"optim.interval must be 'epoch' or 'step', got {optim.interval!r}")
    if len(optim.betas) != 2:
        raise ValueError(f"optim.betas must have two values, got {list(optim.betas)}")
    if not isinstance(optim.warmup_steps, int) or optim.warmup_steps < 0:
        raise ValueError(f"optim.warmup_steps must be a whole number >= 0, got {optim.warmup_steps!r}")
    if not optim.lr > 0 or optim.step_size < 1 or not 0 < optim.gamma <= 1:
        raise ValueError(f"invalid optimiser settings: {optim}")


def _finite_int(value: float) -> int:
    """``value`` as an int, 0 for an unbounded count (Lightning reports an endless run's steps as ``inf``)."""
    return int(value) if math.isfinite(value) else 0


def fused_adam_supported(params: Sequence[Tensor]) -> bool:
    """True when msma uses torch's fused Adam kernel for ``params``: floating point, all on one CPU or CUDA device.

    On the 2-core CPU the fused update of the quickstart's 197 tensors (11.9 M values) takes 10 ms against 40 ms
    for the default per-tensor loop, 7-10 % of a training step (``benchmarks/train_step.py``). The update is the
    same Adam; its floating-point rounding differs from the per-tensor loop's in the last bits. On CUDA the device
    checks' 144-step bf16 smoke run (docs/gpu.md, runs 4-5, 8-9) learned in 2 of 3 runs with the fused kernel and
    in 2 of 3 with torch's default update (one run of each spiked near step 100 and ended worse): the instability
    is the smoke recipe's, not the kernel's, so CUDA uses the fused kernel too. Other devices (MPS, XLA, meta):
    torch's default update.
    """
    if not params:
        return False
    device = params[0].device
    return device.type in ("cpu", "cuda") and all(
        p.device == device and p.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64) for p in params
    )


def _use_fused(setting: bool | None, params: Sequence[Tensor]) -> bool | None:
    """The ``fused`` argument for :class:`torch.optim.Adam` from ``optim.fused`` (None: torch's default update)."""
    if setting is None:
        return fused_adam_supported(params) or None
    return bool(setting) or None


class FaceReconModule(LightningModule):
    """Self-supervised (+ optionally parameter-supervised) 3D face reconstruction.

    Args:
        encoder: image (B, 3, H, W) in [0, 1] -> :class:`FaceParams` in ``face_model.layout``.
        face_model: the face model.
        renderer: the rasteriser.
        loss: the training loss (``forward(batch, params, face, render, skin_vertex_mask) -> LossOutput``).
        optim: optimiser / schedule settings (Adam + StepLR or cosine; the weight average is a callback).
        config: the resolved experiment configuration (plain dict), stored in every checkpoint.
        input_augment: augmentation of the encoder's input in training steps (random convolutions,
            :class:`msma.data.randconv.RandomConvolution`; greyscale, :class:`msma.data.grayscale.RandomGrayscale`;
            :func:`msma.data.input_augment.build_input_augment`; the losses still see the clean image), or None.
        augment_seed: seeds the input augmentation's draws with the global step (resumes draw the same).
    """

    def __init__(
        self,
        encoder: FaceEncoder,
        face_model: FaceModel,
        renderer: MeshRenderer,
        loss: FaceReconLoss,
        optim: OptimConfig | None = None,
        config: dict[str, Any] | None = None,
        input_augment: InputAugment | None = None,
        augment_seed: int = 0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.face_model = face_model
        self.renderer = renderer
        self.loss = loss
        self.optim = optim or OptimConfig()
        check_optim(self.optim)
        self.config: dict[str, Any] = dict(config or {})
        self.input_augment = input_augment
        self.augment_seed = int(augment_seed)
        # Frozen parts: no gradients, no optimiser state.
        for part in (self.face_model, self.renderer, self.loss):
            for p in part.parameters():
                p.requires_grad_(False)
        self.val_metrics = HeldOutMetrics(face_region_mask(face_model))
        self.val_loss = MeanMetric()
        #: optimisation steps skipped because the loss was non-finite (this process, since construction).
        self.nonfinite_steps = 0
        #: the last batch seen in validation with its prediction (for pictures), set on rank 0 only.
        self.last_val_example: tuple[FaceBatch, StepOutput] | None = None
        #: validation / test rows left out this epoch: stand-ins for items that could not be loaded.
        self.eval_load_failures = 0
        #: names of the data sources (``FaceBatch.source_index`` order), taken from the datamodule at fit start.
        self.source_names: tuple[str, ...] = ()

    # ------------------------------------------------------------------ forward
    @property
    def layout(self) -> CoeffLayout:
        return self.face_model.layout

    def forward(self, image: Tensor) -> FaceParams:
        """Image (B, 3, H, W) float RGB in [0, 1] -> predicted :class:`FaceParams`."""
        params: FaceParams = self.encoder(image)
        return params

    def reconstruct(self, image: Tensor, render: bool = True) -> StepOutput:
        """:func:`msma.pipeline.reconstruct` with this module's encoder, face model and renderer."""
        return reconstruct(self.encoder, self.face_model, self.renderer if render else None, image)

    def compute_loss(self, batch: FaceBatch, image: Tensor | None = None) -> tuple[LossOutput, StepOutput]:
        """Forward pass + the loss on one batch -> (LossOutput, StepOutput).

        ``image`` is what the encoder sees instead of ``batch.image`` (an augmented copy, same shape); the losses
        always compare with ``batch``.
        """
        out = self.reconstruct(batch.image if image is None else image)
        assert out.render is not None
        with full_precision(batch.image.device):
            loss_out = self.loss(batch, out.params, out.face, out.render, self.face_model.skin_mask)
        return loss_out, out

    # ------------------------------------------------------------------ steps
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if isinstance(batch, FaceBatch):
            return batch.to(device, non_blocking=True)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def _all_finite(self, total: Tensor) -> bool:
        """True when the loss is finite on every process (so all DDP ranks skip together)."""
        bad = torch.tensor(0.0 if bool(torch.isfinite(total.detach()).all()) else 1.0, device=total.device)
        if self._trainer is not None and self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="sum")
        return bool(bad.item() == 0.0)

    def on_fit_start(self) -> None:
        names = getattr(getattr(self.trainer, "datamodule", None), "source_names", None)
        if names:
            self.source_names = tuple(names)

    def _source_name(self, index: int) -> str:
        return self.source_names[index] if index < len(self.source_names) else f"source{index}"

    def encoder_input(self, batch: FaceBatch) -> Tensor:
        """The training step's encoder input: ``batch.image``, augmented when ``input_augment`` is set
        (draws seeded by ``augment_seed`` and the global step, so a resumed run draws what the original would)."""
        if self.input_augment is None:
            return batch.image
        gen = torch.Generator().manual_seed(self.augment_seed * 1_000_003 + int(self.global_step))
        return self.input_augment(batch.image, gen)

    def training_step(self, batch: FaceBatch, batch_idx: int) -> Tensor | None:
        loss_out, _ = self.compute_loss(batch, self.encoder_input(batch))
        total: Tensor = loss_out.total
        bs = batch.batch_size
        if batch.num_replaced:  # trained on their stand-ins (the batch stays full), counted per epoch
            self.log("train/load_failures", float(batch.num_replaced), reduce_fx="sum", on_step=False, on_epoch=True)
        if not self._all_finite(total):
            # Skipped and counted, never propagated: returning None skips backward and the optimiser step.
            self.nonfinite_steps += 1
            self.log("train/nonfinite_steps", float(self.nonfinite_steps), batch_size=bs, sync_dist=False)
            return None
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=bs)
        for name, value in loss_out.terms.items():
            self.log(f"train/{name}", value.detach(), batch_size=bs)
        # Mixed-source batches: each term's raw value over each source's rows (averaged over the epoch: a source
        # absent from a batch must not repeat its last value at that step), and the supervised counts.
        for src, values in loss_out.by_source.items():
            for name, value in values.items():
                self.log(f"train/{name}/{self._source_name(src)}", value, batch_size=bs, on_step=False, on_epoch=True)
        if loss_out.by_source:
            for name, count in loss_out.counts.items():
                self.log(f"train/n_{name}", float(count), batch_size=bs)
        self.log("train/nonfinite_steps", float(self.nonfinite_steps), batch_size=bs)
        return total

    def validation_step(self, batch: FaceBatch, batch_idx: int) -> None:
        self.eval_load_failures += batch.num_replaced
        genuine = batch.genuine()  # every item scored once, none in another's place
        if genuine is None:
            return
        batch = genuine
        loss_out, out = self.compute_loss(batch)
        total = loss_out.total.detach()
        if torch.isfinite(total):
            self.val_loss.update(total, weight=batch.batch_size)
        self.val_metrics.update(out.params, out.face, batch)
        if batch_idx == 0 and self.global_rank == 0:
            self.last_val_example = (batch, out.detach())

    def _log_epoch(self, prefix: str) -> None:
        if self.eval_load_failures:
            self.log(f"{prefix}/load_failures", float(self.eval_load_failures), sync_dist=False)
        self.eval_load_failures = 0
        if int(self.val_loss.update_count) > 0:
            self.log(f"{prefix}/loss", self.val_loss.compute(), sync_dist=False)
        self.val_loss.reset()
        summary = self.val_metrics.summary()
        self.val_metrics.reset()
        for name, value in summary.values.items():
            if not math.isnan(value):
                self.log(f"{prefix}/{name}", value, prog_bar=name == "nme", sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def test_step(self, batch: FaceBatch, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        params = [p for p in self.encoder.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the encoder has no trainable parameters")
        o = self.optim
        opt = torch.optim.Adam(
            params,
            lr=o.lr,
            betas=(float(o.betas[0]), float(o.betas[1])),
            weight_decay=o.weight_decay,
            fused=_use_fused(o.fused, params),
        )
        total = steps_per_epoch = 0
        if o.scheduler == "cosine" or o.warmup_steps > 0:
            total = _finite_int(self.trainer.estimated_stepping_batches)
            per_epoch = self.trainer.num_training_batches / max(1, self.trainer.accumulate_grad_batches)
            steps_per_epoch = math.ceil(per_epoch) if math.isfinite(per_epoch) else 0
        scheduler = build_lr_scheduler(opt, o, total_steps=total, steps_per_epoch=steps_per_epoch)
        return {"optimizer": opt, "lr_scheduler": scheduler}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith(NON_PERSISTENT_PREFIXES)]:
            del state[key]
        checkpoint[CONFIG_KEY] = self.config
        checkpoint["msma_nonfinite_steps"] = int(self.nonfinite_steps)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.setdefault("state_dict", {})
        for key, value in self.state_dict().items():
            if key.startswith(NON_PERSISTENT_PREFIXES) and key not in state:
                state[key] = value
        self.nonfinite_steps = int(checkpoint.get("msma_nonfinite_steps", 0))

    def load_encoder_state(self, state_dict: dict[str, Tensor], strict: bool = True) -> None:
        """Loads a checkpoint's ``state_dict`` (encoder weights only) into this module."""
        full = {k: v for k, v in self.state_dict().items() if k.startswith(NON_PERSISTENT_PREFIXES)}
        full.update(state_dict)
        self.load_state_dict(full, strict=strict)
