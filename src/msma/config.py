"""Hydra structured-config schemas of an experiment and their ConfigStore registration.

The config root is ``experiments/`` (see :func:`experiments_dir`). Every experiment file starts its defaults
list with ``experiment_schema`` (:class:`ExperimentConfig`, registered here), so every group file and every
command-line override is merged into typed dataclass nodes: a misspelled key or a value of the wrong type fails
when the configuration is composed, with Hydra/OmegaConf's message naming the key and the schema.

Groups and their schemas:

======================  ==================================================
``model/``              :class:`msma.models.config.EncoderConfig`
``data/``               :class:`msma.data.config.DataConfig`
``loss/``               :class:`msma.losses.config.LossConfig`
``face_model/``         :class:`FaceModelConfig`
``renderer/``           :class:`RendererConfig`
``trainer/``            :class:`TrainerConfig` (cpu, gpu, ddp, ddp_cpu)
``optim/``              :class:`OptimConfig`
``logger/``             :class:`LoggerConfig`
======================  ==================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from msma.data.config import DataConfig
from msma.losses.config import LossConfig
from msma.models.config import EncoderConfig

#: Name of the top-level schema in Hydra's ConfigStore (first entry of every experiment's defaults list).
SCHEMA_NAME = "experiment_schema"
#: Environment variable that points the CLI at another config root.
EXPERIMENTS_ENV = "MSMA_EXPERIMENTS"


@dataclass
class FaceModelConfig:
    """Which face model to train (schema of the ``face_model`` group).

    Attributes:
        name: ``"ict"`` (embedded ICT-FaceKit default) or ``"bfm"`` (the user's Deep3D-format BFM).
        path: a converted model file or BFM folder; None = the default location ($MSMA_HOME / $MSMA_BFM_DIR).
    """

    name: str = "ict"
    path: str | None = None


@dataclass
class RendererConfig:
    """Differentiable rasteriser (schema of the ``renderer`` group).

    Attributes:
        backend: ``"torch"`` (CPU reference, any device), ``"nvdiffrast"`` (CUDA) or ``"auto"``.
        antialias: analytic silhouette antialiasing.
    """

    backend: str = "auto"
    antialias: bool = True


@dataclass
class TrainerConfig:
    """Lightning ``Trainer`` settings (schema of the ``trainer`` group).

    Attributes:
        accelerator: ``"cpu"``, ``"gpu"``, ``"auto"``.
        devices: number of devices, a list of ids, or ``"auto"``.
        num_nodes: number of nodes (multi-node DDP).
        strategy: ``"auto"``, ``"ddp"``, ``"ddp_spawn"``, ...
        process_group_backend: DDP backend (``"nccl"``, ``"gloo"``); None = Lightning's default for the device.
        find_unused_parameters: DDP option (needed when some heads are unused, e.g. by an ablation).
        sync_batchnorm: convert BatchNorm layers to SyncBatchNorm (DDP).
        precision: ``"32-true"``, ``"bf16-mixed"``, ``"16-mixed"``.
        max_epochs: epoch budget (-1: unlimited).
        max_steps: optimiser-step budget (-1: unlimited).
        limit_train_batches: fraction or number of training batches per epoch.
        limit_val_batches: fraction or number of validation batches.
        limit_test_batches: fraction or number of test batches (the final held-out evaluation).
        val_check_interval: validate every fraction of an epoch (float) or every N training batches (int).
        check_val_every_n_epoch: validate every N epochs (None with an integer ``val_check_interval``).
        num_sanity_val_steps: validation batches run before training.
        log_every_n: log scalars every N optimiser steps.
        grid_every_n: save/log an image grid every N optimiser steps (0: never; validation grids always).
        grid_rows: faces per image grid.
        gradient_clip_val: clip gradient norm (None: off).
        accumulate_grad_batches: gradient accumulation.
        deterministic: ``torch.use_deterministic_algorithms`` via Lightning.
        benchmark: cuDNN benchmark mode.
        enable_progress_bar: show the progress bar.
        checkpoint_every_n_steps: also refresh ``last.ckpt`` every N steps (None: at validation only).
    """

    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    process_group_backend: str | None = None
    find_unused_parameters: bool = False
    sync_batchnorm: bool = False
    precision: str = "32-true"
    max_epochs: int = 20
    max_steps: int = -1
    limit_train_batches: Any = 1.0
    limit_val_batches: Any = 1.0
    limit_test_batches: Any = 1.0
    val_check_interval: Any = 1.0
    check_val_every_n_epoch: int | None = 1
    num_sanity_val_steps: int = 2
    log_every_n: int = 50
    grid_every_n: int = 500
    grid_rows: int = 6
    gradient_clip_val: float | None = None
    accumulate_grad_batches: int = 1
    deterministic: bool = False
    benchmark: bool = False
    enable_progress_bar: bool = True
    checkpoint_every_n_steps: int | None = None


@dataclass
class OptimConfig:
    """Adam + a learning-rate schedule (schema of the ``optim`` group). Defaults: Deep3D / MSMA (lr 1e-4, StepLR
    x0.2 every 10 epochs, no weight averaging).

    Attributes:
        lr: learning rate (the peak, for ``cosine``).
        betas: Adam betas.
        weight_decay: Adam weight decay.
        scheduler: ``"step"`` (StepLR: x``gamma`` every ``step_size`` ``interval`` units) or ``"cosine"`` (cosine
            annealing from ``lr`` to 0 over the whole run, updated every optimiser step; ``step_size``, ``gamma`` and
            ``interval`` are then unused).
        step_size: StepLR period in ``interval`` units.
        gamma: StepLR factor.
        interval: ``"epoch"`` or ``"step"``.
        ema_decay: 0 = off; else the decay of an exponential moving average of the encoder's weights, which
            validation, checkpoints and the final evaluation use (:class:`msma.training.ema.EncoderEMA`).
        fused: torch's fused Adam kernel: null = where msma verified it (CPU and CUDA,
            :func:`msma.training.module.fused_adam_supported`), true = asked for on any device, false = never
            (torch's default update).
        warmup_steps: 0 = off (the authors' recipe); else the learning rate rises linearly over the first
            ``warmup_steps`` optimiser steps (``lr * (k + 1) / warmup_steps`` at step k), multiplying whatever
            ``scheduler`` gives (:func:`msma.training.schedule.lr_factor`).
    """

    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    scheduler: str = "step"
    step_size: int = 10
    gamma: float = 0.2
    interval: str = "epoch"
    ema_decay: float = 0.0
    fused: bool | None = None
    warmup_steps: int = 0


@dataclass
class WandbConfig:
    """Weights & Biases logging.

    Attributes:
        enabled: log to W&B at all (the CSV log is always written).
        mode: ``"online"``, ``"offline"`` or ``"disabled"``; None = offline unless the user configured an
            account (``WANDB_MODE`` set, ``WANDB_API_KEY`` set, or a wandb entry in ``~/.netrc``).
        project: W&B project.
        entity: W&B entity (team/user); None = the account's default.
        tags: run tags.
        log_model: upload checkpoints as W&B artifacts (online only).
    """

    enabled: bool = True
    mode: str | None = None
    project: str = "msma"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)
    log_model: bool = False


@dataclass
class LoggerConfig:
    """Loggers (schema of the ``logger`` group): W&B (optional) + CSV (always)."""

    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class ExperimentConfig:
    """One experiment: the composed configuration ``msma train --config-name <experiment>`` runs.

    Attributes:
        name: experiment name (run folder ``runs/<name>/<timestamp>`` and W&B run name).
        seed: global seed (Python, NumPy, torch, dataloader workers).
        model: encoder.
        data: datasets and loaders.
        loss: loss weights.
        face_model: face model.
        renderer: rasteriser.
        trainer: Lightning trainer.
        optim: optimiser and schedule.
        logger: loggers.
        resume: a checkpoint to continue from (optimiser, scheduler, step, RNG), or None.
        num_threads: torch intra-op CPU threads (None: torch's default). On a CPU shared with other jobs,
            1 can be many times faster than oversubscribed threads.
        final_eval: after training, evaluate the best checkpoint and the untrained mean face on the held-out
            split and write ``metrics.json`` to the run folder.
        target_nme_ratio: the final evaluation reports whether trained NME <= ratio x untrained NME.
        photos_root: labelled real photos the final evaluation also scores (``msma eval --data photos``):
            a folder, ``"auto"`` (``$MSMA_SHARED/testdata`` when that folder exists, else skipped) or None.
    """

    name: str = MISSING
    seed: int = 0
    model: EncoderConfig = field(default_factory=EncoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    face_model: FaceModelConfig = field(default_factory=FaceModelConfig)
    renderer: RendererConfig = field(default_factory=RendererConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    resume: str | None = None
    num_threads: int | None = None
    final_eval: bool = True
    target_nme_ratio: float = 0.5
    photos_root: str | None = None


def register_configs() -> None:
    """Registers :class:`ExperimentConfig` as ``experiment_schema`` in Hydra's ConfigStore (idempotent)."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=ExperimentConfig)


def experiments_dir() -> Path:
    """The Hydra config root: ``$MSMA_EXPERIMENTS``, else ``experiments/`` of the source checkout, else ./experiments.

    Raises:
        FileNotFoundError: when none of them exists.
    """
    candidates = []
    if os.environ.get(EXPERIMENTS_ENV):
        candidates.append(Path(os.environ[EXPERIMENTS_ENV]))
    candidates.append(Path(__file__).resolve().parents[2] / "experiments")
    candidates.append(Path.cwd() / "experiments")
    for c in candidates:
        if (c / "quickstart.yaml").is_file() or (c.is_dir() and any(c.glob("*.yaml"))):
            return c.resolve()
    raise FileNotFoundError(
        f"no Hydra config root found (looked in {[str(c) for c in candidates]}); set {EXPERIMENTS_ENV} to the "
        "experiments/ folder of an msma checkout"
    )


def list_experiments(root: Path | None = None) -> list[str]:
    """Names of the experiments (``*.yaml`` at the config root, excluding files starting with ``_``)."""
    base = root or experiments_dir()
    return sorted(p.stem for p in base.glob("*.yaml") if not p.stem.startswith("_"))


def compose_experiment(name: str, overrides: list[str] | None = None, root: Path | None = None) -> DictConfig:
    """Composes an experiment outside the CLI (tests, notebooks), with Hydra's compose API.

    Args:
        name: experiment name (``experiments/<name>.yaml``).
        overrides: Hydra overrides such as ``["trainer.max_steps=1", "data.image_size=64"]``.
        root: config root (default :func:`experiments_dir`).

    Returns:
        The composed configuration (``hydra`` node removed), validated against :class:`ExperimentConfig`.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    base = (root or experiments_dir()).resolve()
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(base), version_base="1.3"):
        cfg = compose(config_name=name, overrides=list(overrides or []))
    validate_config(cfg)
    return cfg


def compose_for_cli(name: str, overrides: list[str] | None = None) -> DictConfig:
    """:func:`compose_experiment` for a command line: Hydra's and OmegaConf's errors become a one-line
    ``ValueError`` naming the experiment (an unknown one lists the known experiments).

    Raises:
        ValueError: unknown experiment, an override that does not apply or a value of the wrong type.
    """
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return compose_experiment(name, overrides)
    except MissingConfigException as exc:
        known = sorted(f.stem for f in experiments_dir().glob("*.yaml") if not f.stem.startswith("_"))
        raise ValueError(f"no experiment {name!r}; known: {', '.join(known)}") from exc
    except (HydraException, OmegaConfBaseException) as exc:
        parts = [str(e).strip().splitlines()[0] for e in (exc, exc.__cause__) if e is not None and str(e).strip()]
        raise ValueError(f"{name} {' '.join(overrides or [])}: {' ('.join(parts)}{')' * (len(parts) - 1)}") from exc


def validate_config(cfg: DictConfig) -> None:
    """Re-checks a composed configuration against :class:`ExperimentConfig`.

    Hydra's ``+key=value`` force-adds keys even to typed nodes; this catches such (misspelled) keys and any
    value that does not fit its field.

    Raises:
        ValueError: naming the offending key.
    """
    from omegaconf.errors import OmegaConfBaseException

    try:
        from_container(to_container(cfg))
    except OmegaConfBaseException as err:
        raise ValueError(f"invalid experiment configuration: {err}") from err


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """Resolved plain-dict copy of a configuration (what checkpoints and ``config.yaml`` store)."""
    out = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    if not isinstance(out, dict):
        raise TypeError("an experiment configuration must be a mapping")
    return {str(k): v for k, v in out.items()}


def from_container(data: dict[str, Any]) -> DictConfig:
    """Rebuilds a typed configuration from a plain dict (e.g. one stored in a checkpoint).

    Keys unknown to the current schema raise, naming the key (a checkpoint from an incompatible version).
    """
    register_configs()
    schema = OmegaConf.structured(ExperimentConfig)
    merged = OmegaConf.merge(schema, data)
    if not isinstance(merged, DictConfig):
        raise TypeError("an experiment configuration must be a mapping")
    return merged


def to_typed(cfg: DictConfig) -> ExperimentConfig:
    """The composed configuration as :class:`ExperimentConfig` dataclasses (one conversion per run)."""
    obj = OmegaConf.to_object(cfg)
    if not isinstance(obj, ExperimentConfig):
        raise TypeError(f"expected a configuration composed against ExperimentConfig, got {type(obj).__name__}")
    return obj


def experiment_from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """A plain dict (e.g. stored in a checkpoint) -> :class:`ExperimentConfig`; unknown keys raise, naming the key."""
    return to_typed(from_container(data))


def to_plain_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """:class:`ExperimentConfig` -> resolved plain dict (what checkpoints and ``config.yaml`` store)."""
    return to_container(OmegaConf.structured(cfg))


def tiny_overrides(
    synthetic_cache_dir: str | Path,
    steps: int = 1,
    epochs: int = 1,
    image_size: int = 48,
    train_samples: int = 2,
    small_encoder: bool = False,
) -> list[str]:
    """Hydra overrides that shrink any experiment to a few CPU steps on a tiny synthetic set (tests, notebooks).

    Batches of 2, 2 validation faces, CSV log only, no final evaluation; ``small_encoder`` also swaps in a
    ResNet-18 with narrow MSMA fusion widths.

    Args:
        synthetic_cache_dir: where the synthetic faces are generated and cached.
        steps: optimiser steps (``trainer.max_steps``).
        epochs: ``trainer.max_epochs`` (one validation after each).
        image_size: crop side in pixels.
        train_samples: synthetic training faces.
        small_encoder: ResNet-18 backbone, fusion widths [12, 24, 48].
    """
    out = [
        "trainer=cpu",
        "renderer=torch",
        "logger=csv",
        "num_threads=1",
        "model.pretrained=false",
    ]
    if small_encoder:
        out += ["model.backbone=resnet18", "model.channels=[12,24,48]"]
    return out + [
        "data=synthetic",
        f"data.image_size={image_size}",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.pin_memory=false",
        "data.persistent_workers=false",
        f"data.num_samples={train_samples}",
        "data.val_samples=2",
        "data.augment=false",
        f"data.synthetic_cache_dir={synthetic_cache_dir}",
        f"trainer.max_epochs={epochs}",
        f"trainer.max_steps={steps}",
        "trainer.limit_val_batches=1",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n=1",
        "trainer.grid_every_n=0",
        "final_eval=false",
    ]
