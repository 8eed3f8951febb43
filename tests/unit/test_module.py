"""FaceReconModule orchestration: losses flow to the encoder only, non-finite steps are skipped and counted,
checkpoints hold the encoder and the config, pictures are drawn where the landmarks are."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from msma.builders import build_loss, build_renderer
from msma.checkpoint import CONFIG_KEY
from msma.config import OptimConfig
from msma.data.batch import FaceBatch, FaceSample, collate_samples
from msma.losses.config import LossConfig
from msma.metrics.nme import nme as landmark_nme
from msma.metrics.synthetic import per_vertex_error
from msma.models import build_encoder
from msma.training.module import FaceReconModule, fused_adam_supported
from msma.viz import PRED_COLOR, TARGET_COLOR, make_grid

SIZE = 64


def _gt_batch(face_model: Any, renderer: nn.Module, n: int = 2, seed: int = 0) -> FaceBatch:
    """Faces rendered from known coefficients over a grey background, with every ground truth filled in."""
    g = torch.Generator().manual_seed(seed)
    layout = face_model.layout
    p = layout.zeros(n)
    p = p.replace(
        id=torch.randn(n, layout.n_id, generator=g) * 0.7,
        tex=torch.randn(n, layout.n_tex, generator=g) * 0.5,
        angles=torch.randn(n, 3, generator=g) * 0.15,
        trans=torch.randn(n, 3, generator=g) * 8.0,
    )
    with torch.no_grad():
        face = face_model(p, image_size=SIZE)
        r = renderer.render(face, face_model.tri)
    image = r.image * r.mask + 0.4 * (1 - r.mask)
    flat = layout.join(p)
    samples = [
        FaceSample(
            image=image[i],
            landmarks=face.landmarks_2d[i],
            crop_to_image=torch.eye(3),
            params=flat[i],
            vertices=face.vertices[i],
            skin_mask=r.mask[i],
            source=f"test:{i}",
        )
        for i in range(n)
    ]
    return collate_samples(samples)


@pytest.fixture(scope="module")
def parts(ict_model: Any) -> tuple[Any, nn.Module]:
    return ict_model, build_renderer("torch")


def _module(
    face_model: Any, renderer: nn.Module, loss: nn.Module | None = None, optim: OptimConfig | None = None, **cfg: Any
) -> FaceReconModule:
    torch.manual_seed(0)
    enc = build_encoder("deep3d_r50", face_model.layout, backbone="resnet18", pretrained=False)
    return FaceReconModule(
        encoder=enc,
        face_model=face_model,
        renderer=renderer,
        loss=loss if loss is not None else build_loss(LossConfig()),
        optim=optim if optim is not None else OptimConfig(lr=1e-3),
        config={"name": "unit", **cfg},
    )


def test_gradients_reach_the_encoder_only(parts: tuple[Any, nn.Module]) -> None:
    fm, renderer = parts
    module = _module(fm, renderer)
    batch = _gt_batch(fm, renderer)
    loss = module.training_step(batch, 0)
    assert loss is not None and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in module.encoder.parameters() if p.requires_grad]
    # Zero-initialised heads: their gradients are non-zero, the trunk's are zero until the heads move.
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)
    assert all(not p.requires_grad for p in fm.parameters())
    opt = module.configure_optimizers()["optimizer"]
    assert {id(p) for group in opt.param_groups for p in group["params"]} == {
        id(p) for p in module.encoder.parameters()
    }

    assert opt.param_groups[0]["fused"] is True  # CPU float32 parameters: torch's fused kernel


def test_fused_adam_matches_the_per_tensor_update() -> None:
    """The fused update is Adam: five steps agree with the per-tensor loop to float32 rounding, and it is chosen
    only for floating-point tensors on the CPU or CUDA (device checks 8-9 on CUDA, docs/gpu.md)."""
    torch.manual_seed(0)
    ref = [torch.randn(7, 5, requires_grad=True), torch.randn(3, requires_grad=True)]
    fused = [p.detach().clone().requires_grad_(True) for p in ref]
    start = [p.detach().clone() for p in ref]
    assert fused_adam_supported(fused)
    assert not fused_adam_supported([])
    assert not fused_adam_supported([torch.zeros(2, dtype=torch.int64)])
    assert not fused_adam_supported([torch.zeros(2, device="meta")])  # any device but CPU/CUDA: torch's default
    opts = [torch.optim.Adam(ref, lr=1e-2), torch.optim.Adam(fused, lr=1e-2, fused=True)]
    for step in range(5):
        for params, opt in zip((ref, fused), opts):
            opt.zero_grad()
            sum(((p - step) ** 2).sum() for p in params).backward()
            opt.step()
    for a, b in zip(ref, fused):
        assert float((a - b).abs().max()) < 1e-6
    assert all(float((a - s).abs().min()) > 1e-3 for a, s in zip(ref, start))  # every value moved


@pytest.mark.gpu
def test_fused_adam_is_chosen_on_cuda() -> None:
    """CUDA parameters get the fused kernel too (device check run 9, docs/gpu.md), and it moves them like Adam."""
    ref = [torch.randn(4, 3, requires_grad=True)]
    gpu = [ref[0].detach().cuda().requires_grad_(True)]
    assert fused_adam_supported(gpu)
    opts = [torch.optim.Adam(ref, lr=1e-2), torch.optim.Adam(gpu, lr=1e-2, fused=True)]
    for params, opt in zip((ref, gpu), opts):
        (params[0] ** 2).sum().backward()
        opt.step()
    assert float((ref[0] - gpu[0].cpu()).abs().max()) < 1e-6


def test_optim_fused_setting_chooses_the_update() -> None:
    """``optim.fused``: null = the fused kernel where msma verified it (CPU, CUDA), false = torch's default update, true =
    the fused kernel asked for on any device; anything else is refused naming the key."""
    from msma.training.module import _use_fused, check_optim

    cpu = [torch.zeros(3)]
    meta = [torch.zeros(3, device="meta")]
    assert _use_fused(None, cpu) is True
    assert _use_fused(None, meta) is None
    assert _use_fused(False, cpu) is None
    assert _use_fused(True, meta) is True
    with pytest.raises(ValueError, match="optim.fused"):
        check_optim(OptimConfig(fused="yes"))  # type: ignore[arg-type]


def _identity(x: FaceBatch) -> FaceBatch:
    return x


class _NaNLoss(nn.Module):
    """Wraps a loss and makes its total NaN on chosen calls."""

    def __init__(self, inner: nn.Module, bad_calls: set[int]) -> None:
        super().__init__()
        self.inner = inner
        self.bad_calls = bad_calls
        self.calls = 0

    def forward(self, *args: Any) -> Any:
        out = self.inner(*args)
        self.calls += 1
        if self.calls in self.bad_calls:
            return type(out)(total=out.total * float("nan"), terms=out.terms, raw=out.raw)
        return out


def _fit(
    module: FaceReconModule, batches: list[FaceBatch], root: Any, max_epochs: int = 1, callbacks: Any = None
) -> Any:
    from lightning.pytorch import Trainer

    trainer = Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
    )
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None, collate_fn=_identity))
    return trainer


def test_nonfinite_loss_is_skipped_and_counted(parts: tuple[Any, nn.Module], tmp_path: Any) -> None:
    fm, renderer = parts
    batch = _gt_batch(fm, renderer, n=2)
    # A NaN loss on the only step: no backward, no update at all.
    module = _module(fm, renderer, loss=_NaNLoss(build_loss(LossConfig()), bad_calls={1}))
    before = {k: v.detach().clone() for k, v in module.encoder.named_parameters()}
    _fit(module, [batch], tmp_path)
    assert module.nonfinite_steps == 1
    # (BatchNorm running statistics move in the forward pass; the weights must not.)
    assert all(torch.equal(before[k], v) for k, v in module.encoder.named_parameters())
    # NaN on the 2nd of 3 steps: counted once, the other steps train, weights stay finite.
    module = _module(fm, renderer, loss=_NaNLoss(build_loss(LossConfig()), bad_calls={2}))
    _fit(module, [batch] * 3, tmp_path)
    assert module.nonfinite_steps == 1
    after = dict(module.encoder.named_parameters())
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_warmup_multiplies_the_epoch_step_schedule_in_training(parts: tuple[Any, nn.Module], tmp_path: Any) -> None:
    """``optim.warmup_steps`` in a real fit: the rate Adam uses at step k is lr * min(1, (k+1)/4) * 0.2 ** epoch, so
    the epoch-interval StepLR is turned into optimiser steps from the trainer's batches per epoch (3 here)."""
    from lightning.pytorch import Callback

    fm, renderer = parts
    seen: list[float] = []

    class Rates(Callback):
        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            seen.append(optimizer.param_groups[0]["lr"])

    optim = OptimConfig(lr=1e-3, step_size=1, gamma=0.2, interval="epoch", warmup_steps=4)
    module = _module(fm, renderer, optim=optim)
    _fit(module, [_gt_batch(fm, renderer, n=2)] * 3, tmp_path, max_epochs=2, callbacks=[Rates()])
    expected = [1e-3 * min(1.0, (k + 1) / 4) * 0.2 ** (k // 3) for k in range(6)]
    assert seen == pytest.approx(expected, rel=1e-9)


def test_checkpoint_holds_encoder_and_config_only(parts: tuple[Any, nn.Module]) -> None:
    fm, renderer = parts
    module = _module(fm, renderer, seed=3)
    ckpt: dict[str, Any] = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    assert ckpt[CONFIG_KEY] == {"name": "unit", "seed": 3}
    keys = list(ckpt["state_dict"])
    assert keys and all(k.startswith("encoder.") for k in keys)
    other = _module(fm, renderer)
    with torch.no_grad():
        for p in other.encoder.parameters():
            p.add_(1.0)
    other.on_load_checkpoint(ckpt)
    other.load_state_dict(ckpt["state_dict"])  # strict: face model buffers were filled back in
    for k, v in module.encoder.state_dict().items():
        assert torch.equal(v, other.encoder.state_dict()[k])


def test_transfer_batch_to_device_keeps_facebatch(parts: tuple[Any, nn.Module]) -> None:
    fm, renderer = parts
    module = _module(fm, renderer)
    batch = _gt_batch(fm, renderer, n=1)
    moved = module.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    assert isinstance(moved, FaceBatch) and moved.image.device.type == "cpu"


def test_metrics_at_ground_truth(parts: tuple[Any, nn.Module]) -> None:
    fm, renderer = parts
    batch = _gt_batch(fm, renderer, n=2)
    assert batch.vertices is not None
    assert torch.allclose(landmark_nme(batch.landmarks, batch.landmarks), torch.zeros(2))
    shifted = batch.landmarks + torch.tensor([3.0, 4.0])
    box = batch.landmarks.amax(1) - batch.landmarks.amin(1)
    expected = 5.0 / (box[:, 0] * box[:, 1]).sqrt()
    assert torch.allclose(landmark_nme(shifted, batch.landmarks), expected, rtol=1e-4)
    assert torch.allclose(
        per_vertex_error(batch.vertices + torch.tensor([0.0, 3.0, 4.0]), batch.vertices, "none"),
        torch.full((2,), 5.0),
    )


def test_validation_logs_nme_and_vertex_error(parts: tuple[Any, nn.Module]) -> None:
    fm, renderer = parts
    module = _module(fm, renderer).eval()
    batch = _gt_batch(fm, renderer, n=2)
    with torch.no_grad():
        module.validation_step(batch, 0)
    # The untrained module predicts the mean face: a clearly non-zero error against the posed ground truth.
    summary = module.val_metrics.summary()
    assert summary["nme"] > 0.01 and summary["vertex_posed_mm"] > 1.0 and summary["vertex_aligned_mm"] > 0.0
    assert summary["id_rmse"] > 0.0 and summary.count == 2
    assert module.last_val_example is not None


def test_validation_leaves_stand_ins_out_and_counts_them(parts: tuple[Any, nn.Module]) -> None:
    """A row standing in for an item that could not be loaded is counted, not scored; a batch of stand-ins only
    is skipped."""
    import dataclasses

    fm, renderer = parts
    module = _module(fm, renderer).eval()
    batch = _gt_batch(fm, renderer, n=3)
    marked = dataclasses.replace(batch, replaced=torch.tensor([False, True, False]))
    with torch.no_grad():
        module.validation_step(marked, 0)
        module.validation_step(dataclasses.replace(batch, replaced=torch.ones(3, dtype=torch.bool)), 1)
    assert module.eval_load_failures == 4
    summary = module.val_metrics.summary()
    assert summary.count == 2
    reference = _module(fm, renderer).eval()
    with torch.no_grad():
        reference.validation_step(batch.select([0, 2]), 0)
    assert summary["nme"] == pytest.approx(reference.val_metrics.summary()["nme"], rel=1e-6)
    module._log_epoch("val")  # logs val/load_failures (no trainer here) and starts the next epoch's count at 0
    assert module.eval_load_failures == 0


def test_grid_draws_landmarks_where_they_are() -> None:
    image = torch.zeros(2, 3, 32, 32)
    rendered = torch.ones(2, 3, 32, 32)
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:24, 8:24] = 1.0
    pred = torch.full((2, 68, 2), 5.0)
    target = torch.full((2, 68, 2), 25.0)
    grid = make_grid(image, rendered, mask, pred, target)
    assert grid.shape == (64, 96, 3) and grid.dtype == np.uint8
    assert (grid[16, 32 + 16] == 255).all() and (grid[2, 32 + 2] == 0).all()  # overlay panel
    assert tuple(grid[5, 64 + 5]) == PRED_COLOR and tuple(grid[25, 64 + 25]) == TARGET_COLOR
    assert tuple(grid[32 + 5, 64 + 5]) == PRED_COLOR


def test_untrained_module_predicts_the_mean_face(parts: tuple[Any, nn.Module]) -> None:
    from msma.checkpoint import untrained_pipeline

    fm, renderer = parts
    module = untrained_pipeline(encoder="deep3d_r50", backbone="resnet18", renderer_backend="torch")
    batch = _gt_batch(fm, renderer, n=2)
    with torch.no_grad():
        out = module.reconstruct(batch.image)
        mean = fm(fm.layout.zeros(2), image_size=SIZE)
    for _, value in out.params.items():
        assert torch.equal(value, torch.zeros_like(value))
    assert torch.allclose(out.face.vertices, mean.vertices)
    assert out.render is not None and out.render.image.shape == batch.image.shape
    assert module.config["model"]["name"] == "deep3d_r50" and module.config["renderer"]["backend"] == "torch"


def test_bf16_autocast_reaches_the_encoder_only(parts: tuple[Any, nn.Module]) -> None:
    """Under bf16 autocast the geometry, the render and the loss stay float32 and equal the float32 pass on the
    same coefficients (bfloat16 geometry would move landmarks by pixels)."""
    fm, renderer = parts
    module = _module(fm, renderer).eval()
    batch = _gt_batch(fm, renderer)
    with torch.no_grad(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss_out, out = module.compute_loss(batch)
        raw = module.encoder(batch.image)
    assert raw.id.dtype == torch.bfloat16  # the encoder did run in mixed precision
    assert out.params.id.dtype == torch.float32
    assert out.face.vertices.dtype == torch.float32 and out.face.landmarks_2d.dtype == torch.float32
    assert out.render is not None and out.render.image.dtype == torch.float32
    assert loss_out.total.dtype == torch.float32
    with torch.no_grad():
        ref = fm(out.params, image_size=SIZE)
        ref_loss, _ = module.compute_loss(batch)
    torch.testing.assert_close(out.face.landmarks_2d, ref.landmarks_2d, rtol=0, atol=1e-4)
    torch.testing.assert_close(out.face.vertices, ref.vertices, rtol=0, atol=1e-5)
    # The fp32 loss differs only through the encoder's bf16 rounding of the coefficients.
    assert abs(float(loss_out.total) - float(ref_loss.total)) <= 0.05 * abs(float(ref_loss.total)) + 1e-3


def test_randconv_reaches_the_encoder_input_only_and_follows_the_step(parts: tuple[Any, nn.Module]) -> None:
    """The training step's encoder input is the randomly convolved image (a function of seed and global step);
    without the augmentation it is the batch's image; the loss compares with the clean batch either way."""
    from msma.data.randconv import RandomConvolution

    fm, renderer = parts
    batch = _gt_batch(fm, renderer, n=3)
    plain = _module(fm, renderer)
    assert plain.encoder_input(batch) is batch.image
    module = _module(fm, renderer)
    module.input_augment = RandomConvolution(p=1.0)
    module.augment_seed = 4
    first = module.encoder_input(batch)
    assert first.shape == batch.image.shape and not torch.allclose(first, batch.image, atol=1e-3)
    assert torch.equal(module.encoder_input(batch), first)  # same step, same draw
    module.augment_seed = 5
    assert not torch.equal(module.encoder_input(batch), first)
    # The encoder receives the augmented image; the losses compare with the clean batch: the untrained heads
    # predict the mean face from any input, so every loss term is the clean run's (a photometric term against the
    # augmented image would differ).
    seen: list[torch.Tensor] = []
    hook = module.encoder.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    module.eval()
    with torch.no_grad():
        clean, _ = module.compute_loss(batch)
        aug, _ = module.compute_loss(batch, first)
    hook.remove()
    assert seen[0] is batch.image and seen[1] is first
    assert set(aug.terms) == set(clean.terms)
    for name, value in clean.terms.items():
        torch.testing.assert_close(aug.terms[name], value, msg=name)


def test_build_module_turns_input_augmentation_on_from_the_config(ict_model: Any) -> None:
    from msma.config import compose_experiment
    from msma.training.checkpoint import build_module

    cfg = compose_experiment("embedded", ["data.image_size=64"])
    module = build_module(cfg, face_model=ict_model)
    assert module.input_augment is not None and module.input_augment.p == pytest.approx(0.5)
    assert module.augment_seed == cfg.data.seed
    assert build_module(compose_experiment("quickstart"), face_model=ict_model).input_augment is None
    with pytest.raises(ValueError, match="probability"):
        build_module(compose_experiment("quickstart", ["data.randconv=1.5"]), face_model=ict_model)
    grey = build_module(compose_experiment("quickstart", ["data.grayscale=1.0"]), face_model=ict_model)
    from msma.data.grayscale import RandomGrayscale

    assert isinstance(grey.input_augment, RandomGrayscale) and grey.input_augment.p == 1.0
    with pytest.raises(ValueError, match="grayscale probability"):
        build_module(compose_experiment("quickstart", ["data.grayscale=2"]), face_model=ict_model)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("scheduler", "linear", "optim.scheduler"),
        ("ema_decay", 1.0, "optim.ema_decay"),
        ("ema_decay", -0.5, "optim.ema_decay"),
        ("interval", "batch", "optim.interval"),
        ("warmup_steps", -1, "optim.warmup_steps"),
        ("warmup_steps", 2.5, "optim.warmup_steps"),
    ],
)
def test_bad_optimiser_settings_name_the_field(field: str, value: Any, message: str) -> None:
    from msma.training.module import check_optim

    check_optim(OptimConfig(scheduler="cosine", ema_decay=0.99))  # valid: no error
    with pytest.raises(ValueError, match=message):
        check_optim(OptimConfig(**{field: value}))
