"""``msma eval --data synthetic``: a network on the held-out split of its own run (or an overridden one).

The split comes from the run's data configuration through :meth:`FaceDataModule.heldout_dataloader` (the test
split when the run has one, else its validation split), the numbers from :func:`msma.evaluation.heldout.evaluate`
— the same split and evaluator as the run's ``metrics.json`` and validation, so all three agree.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from msma.config import experiment_from_dict
from msma.data.config import DataConfig
from msma.data.datamodule import TEST_SEED_OFFSET, VAL_SEED_OFFSET, FaceDataModule
from msma.evaluation.heldout import evaluate
from msma.pipeline import FacePipeline


def synthetic_split_config(
    data: DataConfig,
    image_size: int | None = None,
    num_samples: int | None = None,
    seed: int | None = None,
    cache_dir: str | None = None,
    batch_size: int | None = None,
) -> DataConfig:
    """The data configuration of the synthetic held-out split: the run's own unless overridden.

    A run whose held-out split is not synthetic gets a synthetic test split (``test_kind="synthetic"``) of the
    same seed and size. Loading happens in the main process (``num_workers=0``).
    """
    own = data.test_kind == "synthetic" or (data.test_kind is None and data.kind == "synthetic")
    changes: dict[str, Any] = {"num_workers": 0, "persistent_workers": False}
    if not own:
        changes["test_kind"] = "synthetic"
    for key, value in (
        ("image_size", image_size),
        ("val_samples", num_samples),
        ("seed", seed),
        ("synthetic_cache_dir", cache_dir),
        ("batch_size", batch_size),
    ):
        if value is not None:
            changes[key] = value
    return dataclasses.replace(data, **changes)


def evaluate_synthetic_split(
    model: FacePipeline,
    device: torch.device,
    image_size: int | None = None,
    num_samples: int | None = None,
    seed: int | None = None,
    cache_dir: str | None = None,
    batch_size: int | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Means of :data:`msma.evaluation.heldout.METRIC_NAMES` on the synthetic held-out split, with its protocol.

    Args:
        model: the network (its ``config`` holds the run's configuration).
        device: where to run.
        image_size, num_samples, seed, cache_dir, batch_size: overrides of the run's ``data`` settings
            (``image_size``, ``val_samples``, ``seed``, ``synthetic_cache_dir``, ``batch_size``).
        limit: evaluate the first N faces only.
    """
    data = synthetic_split_config(
        experiment_from_dict(model.config).data, image_size, num_samples, seed, cache_dir, batch_size
    )
    datamodule = FaceDataModule(data, model.face_model)
    loader, split = datamodule.heldout_dataloader(limit)
    summary = evaluate(model.encoder, model.face_model, loader, device)
    offset = TEST_SEED_OFFSET if split == "test" else VAL_SEED_OFFSET
    return {
        **summary.as_dict(),
        "protocol": {
            "split": f"synthetic {split} split: seed {data.seed} + {offset}, first {summary.count} of "
            f"{data.val_samples} samples",
            "image_size": data.image_size,
            "vertex_error": "mean Euclidean distance over the rendered-region vertices; vertex_posed_mm as posed "
            "(camera frame), vertex_aligned_mm after a per-face rigid least-squares fit",
            "nme": "68-point 2D NME in the crop, fraction of sqrt(w*h) of the ground-truth box",
        },
    }
