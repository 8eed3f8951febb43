"""``FaceReconModule``: the LightningModule that wires encoder -> face model -> renderer -> losses.

Orchestration only: the loss math lives in :mod:`msma.losses`, the geometry in :mod:`msma.face_model`, the
rasterisation in :mod:`msma.render`, the metrics in :mod:`msma.metrics`.

Only the encoder's weights are trainable and stored in checkpoints: the face model (tens of MB of buffers), the
renderer and the loss networks (e.g. a frozen face-recognition net) are rebuilt from the configuration, so their
tensors are dropped from ``checkpoint["state_dict"]`` on save and filled back from the live module on load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics import MeanMetric

from msma.data.batch import FaceBatch
from msma.face_model.output import FaceOutput
from msma.face_model.params import CoeffLayout, FaceParams
from msma.render.base import RenderOutput

#: Checkpoint key holding the resolved experiment configuration (a plain dict of primitives).
CONFIG_KEY = "msma_config"
#: Sub-modules whose tensors are rebuilt from the configuration and therefore not stored in checkpoints.
NON_PERSISTENT_PREFIXES: tuple[str, ...] = ("face_model.", "renderer.", "loss.")


class _FaceModelLike(Protocol):
    layout: CoeffLayout
    tri: Tensor
    skin_mask: Tensor

    def __call__(self, params: FaceParams, image_size: int = 224) -> FaceOutput: ...


@dataclass(frozen=True)
class StepOutput:
    """Everything one forward pass produces (for the loss, the metrics and the pictures).

    Attributes:
        params: predicted coefficients.
        face: posed geometry and colour at the batch's image size.
        render: rendered image / mask (B, C, H, W).
    """

    params: FaceParams
    face: FaceOutput
    render: RenderOutput


@dataclass(frozen=True)
class OptimSettings:
    """Optimiser and learning-rate schedule (Deep3D / MSMA: Adam 1e-4, x0.2 every 10 epochs).

    Attributes:
        lr: Adam learning rate.
        betas: Adam betas.
        weight_decay: L2 weight decay (Adam's, not decoupled).
        step_size: StepLR period, in epochs (``interval="epoch"``) or optimiser steps (``interval="step"``).
        gamma: StepLR factor.
        interval: ``"epoch"`` or ``"step"``.
    """

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    step_size: int = 10
    gamma: float = 0.2
    interval: str = "epoch"

    def __post_init__(self) -> None:
        if self.interval not in ("epoch", "step"):
            raise ValueError(f"OptimSettings.interval must be 'epoch' or 'step', got {self.interval!r}")
        if not self.lr > 0 or self.step_size < 1 or not 0 < self.gamma <= 1:
            raise ValueError(f"invalid optimiser settings: {self}")


def landmark_nme(pred: Tensor, target: Tensor) -> Tensor:
    """68-point NME per sample, normalised by sqrt(w * h) of the target landmarks' bounding box.

    Delegates to :func:`msma.metrics.nme.nme` (the AFLW2000-3D protocol's normalisation).

    Args:
        pred: (B, 68, 2) predicted landmarks in pixels.
        target: (B, 68, 2) target landmarks in pixels.

    Returns:
        (B,) NME as a fraction (multiply by 100 for %).
    """
    from msma.metrics.nme import nme

    return nme(pred, target)


def vertex_error_mm(pred: Tensor, target: Tensor) -> Tensor:
    """Mean per-vertex Euclidean distance, (B,) in mm (same model frame; no alignment).

    Args:
        pred: (B, N, 3) predicted posed vertices in mm.
        target: (B, N, 3) ground-truth posed vertices in mm.
    """
    if pred.shape != target.shape:
        raise ValueError(f"vertex_error_mm: shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    return (pred - target).norm(dim=-1).mean(dim=-1)


def aligned_vertex_error_mm(pred: Tensor, target: Tensor) -> Tensor:
    """Mean per-vertex distance after a per-face rigid least-squares alignment, (B,) in mm (shape error only).

    Delegates to :func:`msma.metrics.synthetic.per_vertex_error` (``align="rigid"``).

    Args:
        pred: (B, N, 3) predicted vertices in mm.
        target: (B, N, 3) ground-truth vertices in mm (same topology).
    """
    from msma.metrics.synthetic import per_vertex_error

    return per_vertex_error(pred, target, align="rigid")


class FaceReconModule(LightningModule):
    """Self-supervised (+ optionally parameter-supervised) 3D face reconstruction.

    Args:
        encoder: image (B, 3, H, W) in [0, 1] -> :class:`FaceParams` in ``face_model.layout``.
        face_model: :class:`msma.face_model.model.FaceModel` (``forward(params, image_size) -> FaceOutput``).
        renderer: :class:`msma.render.renderer.MeshRenderer` (``render(face, tri) -> RenderOutput``).
        loss: :class:`msma.losses.total.FaceReconLoss`
            (``forward(batch, params, face, render, skin_vertex_mask) -> LossOutput``).
        optim: optimiser / schedule settings.
        config: the resolved experiment configuration (plain dict), stored in every checkpoint.
    """

    def __init__(
        self,
        encoder: nn.Module,
        face_model: nn.Module,
        renderer: nn.Module,
        loss: nn.Module,
        optim: OptimSettings | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.face_model = face_model
        self.renderer = renderer
        self.loss = loss
        self.optim = optim or OptimSettings()
        self.config: dict[str, Any] = dict(config or {})
        # Frozen parts: no gradients, no optimiser state.
        for part in (self.face_model, self.renderer, self.loss):
            for p in part.parameters():
                p.requires_grad_(False)
        self.val_nme = MeanMetric()
        self.val_vertex_mm = MeanMetric()
        self.val_vertex_aligned_mm = MeanMetric()
        self.val_loss = MeanMetric()
        #: optimisation steps skipped because the loss was non-finite (this process, since construction).
        self.nonfinite_steps = 0
        #: the last batch seen in validation with its prediction (for pictures), set on rank 0 only.
        self.last_val_example: tuple[FaceBatch, StepOutput] | None = None

    # ------------------------------------------------------------------ forward
    @property
    def layout(self) -> CoeffLayout:
        return self.face_model.layout  # type: ignore[return-value]

    def forward(self, image: Tensor) -> FaceParams:
        """Image (B, 3, H, W) float RGB in [0, 1] -> predicted :class:`FaceParams`."""
        return self.encoder(image)  # type: ignore[no-any-return]

    def reconstruct(self, image: Tensor, render: bool = True) -> StepOutput:
        """Runs encoder, face model and (optionally) renderer on square crops (B, 3, S, S)."""
        if image.ndim != 4 or image.shape[1] != 3 or image.shape[-1] != image.shape[-2]:
            raise ValueError(f"expected square images (B, 3, S, S), got {tuple(image.shape)}")
        params = self.encoder(image)
        face = self.face_model(params, image_size=int(image.shape[-1]))
        rendered = self.renderer.render(face, self.face_model.tri) if render else None  # type: ignore[operator]
        return StepOutput(params=params, face=face, render=rendered)  # type: ignore[arg-type]

    def compute_loss(self, batch: FaceBatch) -> tuple[Any, StepOutput]:
        """Forward pass + :class:`msma.losses.total.FaceReconLoss` on one batch -> (LossOutput, StepOutput)."""
        out = self.reconstruct(batch.image)
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

    def training_step(self, batch: FaceBatch, batch_idx: int) -> Tensor | None:
        loss_out, _ = self.compute_loss(batch)
        total: Tensor = loss_out.total
        bs = batch.batch_size
        if not self._all_finite(total):
            # Skipped and counted, never propagated: returning None skips backward and the optimiser step.
            self.nonfinite_steps += 1
            self.log("train/nonfinite_steps", float(self.nonfinite_steps), batch_size=bs, sync_dist=False)
            return None
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=bs)
        for name, value in loss_out.terms.items():
            self.log(f"train/{name}", value.detach(), batch_size=bs)
        self.log("train/nonfinite_steps", float(self.nonfinite_steps), batch_size=bs)
        return total

    def validation_step(self, batch: FaceBatch, batch_idx: int) -> None:
        loss_out, out = self.compute_loss(batch)
        total = loss_out.total.detach()
        if torch.isfinite(total):
            self.val_loss.update(total, weight=batch.batch_size)
        valid = batch.landmark_valid
        if bool(valid.any()):
            per = landmark_nme(out.face.landmarks_2d[valid].detach().float(), batch.landmarks[valid].float())
            self.val_nme.update(per)
        if batch.vertices is not None and batch.vertices.shape == out.face.vertices.shape:
            pred_v, gt_v = out.face.vertices.detach().float(), batch.vertices.float()
            self.val_vertex_mm.update(vertex_error_mm(pred_v, gt_v))
            self.val_vertex_aligned_mm.update(aligned_vertex_error_mm(pred_v, gt_v))
        if batch_idx == 0 and self.global_rank == 0:
            self.last_val_example = (batch, _detach_step(out))

    def on_validation_epoch_end(self) -> None:
        for name, metric in (
            ("val/loss", self.val_loss),
            ("val/nme", self.val_nme),
            ("val/vertex_mm", self.val_vertex_mm),
            ("val/vertex_aligned_mm", self.val_vertex_aligned_mm),
        ):
            if metric.update_count > 0:  # type: ignore[operator]
                self.log(name, metric.compute(), prog_bar=name == "val/nme", sync_dist=False)
            metric.reset()

    def test_step(self, batch: FaceBatch, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        for name, metric in (
            ("test/nme", self.val_nme),
            ("test/vertex_mm", self.val_vertex_mm),
            ("test/vertex_aligned_mm", self.val_vertex_aligned_mm),
            ("test/loss", self.val_loss),
        ):
            if metric.update_count > 0:  # type: ignore[operator]
                self.log(name, metric.compute())
            metric.reset()

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        params = [p for p in self.encoder.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the encoder has no trainable parameters")
        opt = torch.optim.Adam(params, lr=self.optim.lr, betas=self.optim.betas, weight_decay=self.optim.weight_decay)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=self.optim.step_size, gamma=self.optim.gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": self.optim.interval, "frequency": 1}}

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


def _detach_step(out: StepOutput) -> StepOutput:
    face = FaceOutput(
        vertices=out.face.vertices.detach(),
        vertices_canonical=out.face.vertices_canonical.detach(),
        normals=out.face.normals.detach(),
        albedo=out.face.albedo.detach(),
        color=out.face.color.detach(),
        landmarks_3d=out.face.landmarks_3d.detach(),
        landmarks_2d=out.face.landmarks_2d.detach(),
        clip=out.face.clip.detach(),
        image_size=out.face.image_size,
    )
    r = out.render
    render = RenderOutput(
        image=r.image.detach(),
        mask=r.mask.detach(),
        depth=r.depth.detach(),
        normals=r.normals.detach(),
        rast=r.rast.detach(),
    )
    return StepOutput(params=out.params.detach(), face=face, render=render)
