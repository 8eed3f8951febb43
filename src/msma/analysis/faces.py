"""Per-face evaluation of several networks on the same synthetic test faces, with AFLW2000-3D yaw bins.

The numbers come from the held-out evaluator's per-face mode (:func:`msma.evaluation.heldout.evaluate_per_face`),
so their means are what ``metrics.json`` and ``msma eval`` report for the same faces.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from torch import Tensor

from msma.data.batch import FaceBatch
from msma.pipeline import FacePipeline

#: AFLW2000-3D yaw bins (|yaw| <= 30, <= 60, > 60 degrees; msma.metrics.nme.yaw_bin).
YAW_BIN_LABELS: tuple[str, str, str] = ("0-30", "30-60", "60-90")


@dataclass(frozen=True)
class EvalFaces:
    """A fixed set of synthetic test faces (the same for every run being compared).

    Attributes:
        batch: the collated faces (crops, landmarks, posed vertices, coefficients, yaw).
    """

    batch: FaceBatch

    @property
    def image(self) -> Tensor:
        """(B, 3, S, S) float RGB crops in [0, 1]."""
        return self.batch.image

    @property
    def landmarks(self) -> Tensor:
        """(B, 68, 2) ground-truth landmarks, crop pixels (x right, y down)."""
        return self.batch.landmarks

    @property
    def yaw_deg(self) -> Tensor:
        """(B,) ground-truth yaw in degrees."""
        return self.batch.yaw

    @property
    def size(self) -> int:
        """Number of faces B."""
        return self.batch.batch_size

    @property
    def image_size(self) -> int:
        """Crop side S in pixels."""
        return int(self.batch.image.shape[-1])


def load_eval_faces(
    num_samples: int,
    image_size: int,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    face_model: str = "ict",
    face_model_path: str | None = None,
    synthetic_renderer: str = "torch",
) -> EvalFaces:
    """The synthetic test split of msma's datamodule (seed ``seed + TEST_SEED_OFFSET``), first ``num_samples``,
    built by :meth:`msma.data.datamodule.FaceDataModule.heldout_dataloader` (as ``msma eval`` and the runs do).

    Args:
        num_samples: number of faces.
        image_size: crop side in pixels.
        seed: the data seed of the runs (``data.seed``; their test split).
        cache_dir: synthetic cache folder (default ``$MSMA_HOME/synthetic``).
        face_model: the runs' face model name (``face_model.name`` of their config: ``"ict"`` or ``"bfm"``).
        face_model_path: its file/folder (``face_model.path``; None: the default location).
        synthetic_renderer: the runs' ``data.synthetic_renderer``.
    """
    from msma.builders import build_face_model
    from msma.data.batch import collate_samples
    from msma.data.config import DataConfig
    from msma.data.datamodule import FaceDataModule

    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    data = DataConfig(
        kind="synthetic",
        test_kind="synthetic",
        image_size=image_size,
        seed=seed,
        val_samples=num_samples,
        num_workers=0,
        synthetic_cache_dir=str(cache_dir) if cache_dir is not None else "auto",
        synthetic_renderer=synthetic_renderer,
    )
    loader, _ = FaceDataModule(data, build_face_model(face_model, face_model_path)).heldout_dataloader()
    batch = collate_samples([loader.dataset[i] for i in range(num_samples)])
    return EvalFaces(batch)


def evaluate_per_face(models: Mapping[str, FacePipeline], faces: EvalFaces, batch_size: int = 16) -> pd.DataFrame:
    """Per-face errors of several networks on the same faces.

    Args:
        models: label -> network (e.g. :func:`load_run_model`), all of the same face model as ``faces``.
        faces: the test faces.
        batch_size: faces per forward pass.

    Returns:
        Long frame, one row per (run, face): ``run``, ``face``, ``yaw_deg`` (ground truth), ``yaw_bin`` (one of
        :data:`YAW_BIN_LABELS`), every name of :data:`msma.evaluation.heldout.METRIC_NAMES` (``nme`` as a
        fraction, ``vertex_posed_mm``, ``vertex_aligned_mm``, ...) and ``nme_pct`` (= 100 x ``nme``).
    """
    from msma.evaluation.heldout import evaluate_per_face as per_face_rows
    from msma.metrics.nme import yaw_bin

    bins = yaw_bin(faces.yaw_deg)
    rows = []
    for label, model in models.items():
        model = model.eval()
        device = next(model.parameters()).device
        n_vertices = model.face_model.n_vertices
        if faces.batch.vertices is not None and faces.batch.vertices.shape[1] != n_vertices:
            raise ValueError(
                f"{label}: the network's face model has {n_vertices} vertices, the test faces "
                f"{faces.batch.vertices.shape[1]} (another face model?)"
            )
        chunks = [_slice(faces.batch, s, s + batch_size) for s in range(0, faces.size, batch_size)]
        for row in per_face_rows(model.encoder, model.face_model, chunks, device):
            i = int(row["face"])
            b = int(bins[i])
            rows.append(
                {
                    "run": label,
                    **row,
                    "yaw_deg": float(faces.yaw_deg[i]),
                    "yaw_bin": YAW_BIN_LABELS[b] if b >= 0 else "unknown",
                    "nme_pct": 100.0 * float(row["nme"]),
                }
            )
    return pd.DataFrame(rows)


def _slice(batch: FaceBatch, start: int, stop: int) -> FaceBatch:
    return batch.select(slice(start, stop))


def yaw_bin_table(per_face: pd.DataFrame, value: str = "nme_pct") -> pd.DataFrame:
    """Mean ``value`` per run and yaw bin, AFLW2000-3D style.

    Args:
        per_face: :func:`evaluate_per_face`'s frame.
        value: a column of :func:`evaluate_per_face` (``nme_pct``, ``vertex_aligned_mm``, ``vertex_posed_mm``, ...).

    Returns:
        Index: run (in first-seen order); columns: the three yaw bins (NaN when a bin has no face), ``mean``
        (mean of the non-empty bins' means, the AFLW2000-3D "balanced" mean), ``all`` (mean over all faces) and
        ``faces``.
    """
    if value not in per_face.columns:
        raise ValueError(f"yaw_bin_table: no column {value!r} (columns: {list(per_face.columns)})")
    order = list(dict.fromkeys(per_face["run"]))
    table = per_face.pivot_table(index="run", columns="yaw_bin", values=value, aggfunc="mean")
    table = table.reindex(index=order, columns=list(YAW_BIN_LABELS))
    table["mean"] = table[list(YAW_BIN_LABELS)].mean(axis=1, skipna=True)
    grouped = per_face.groupby("run", sort=False)[value]
    table["all"] = grouped.mean().reindex(order)
    table["faces"] = grouped.size().reindex(order)
    table.columns.name = None
    return table


# -------------------------------------------------------------------------------------------- plots
