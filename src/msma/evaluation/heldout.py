"""The one held-out evaluator: landmark NME, per-vertex and coefficient errors of a network on a split.

Validation (:class:`msma.training.module.FaceReconModule`), the end-of-training report (``metrics.json``),
``msma eval --data synthetic`` and the notebooks all call this module, so the same checkpoint on the same split
reports the same numbers under the same names (:data:`METRIC_NAMES`):

======================  =====================================================================================
``nme``                 68-point 2D NME, fraction of ``sqrt(w*h)`` of the ground-truth landmark box (x100: %)
``vertex_posed_mm``     mean per-vertex distance as posed, camera frame (shape + pose + translation), mm
``vertex_aligned_mm``   the same after a per-face rigid least-squares alignment (shape only), mm
``id_rmse`` ...         coefficient RMS errors (``id``, ``exp``, ``tex``, ``sh``) where the ground truth has them
``angles_deg``          mean absolute pitch/yaw/roll error, degrees (wrapped to [-180, 180])
``yaw_deg``             absolute yaw error, degrees
``trans_mm``            translation error, mm
======================  =====================================================================================

Vertex errors average the vertices of the rendered triangles (:func:`face_region_mask`: the region the
photometric loss sees); a metric without ground truth in a sample (no landmarks, no vertices, no coefficients)
is left out of that sample's mean, and is NaN when no sample had it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from msma.data.batch import FaceBatch
from msma.face_model.model import FaceModel
from msma.face_model.output import FaceOutput
from msma.face_model.params import GROUPS, CoeffLayout, FaceParams
from msma.metrics.nme import nme
from msma.metrics.synthetic import coefficient_errors, per_vertex_error

#: Metric names, in report order (see the module docstring for their definitions and units).
METRIC_NAMES: tuple[str, ...] = (
    "nme",
    "vertex_posed_mm",
    "vertex_aligned_mm",
    "id_rmse",
    "exp_rmse",
    "tex_rmse",
    "sh_rmse",
    "angles_deg",
    "yaw_deg",
    "trans_mm",
)


def face_region_mask(face_model: FaceModel) -> Tensor:
    """(N,) float: 1 for the vertices of the rendered triangles (``face_model.tri``), 0 elsewhere."""
    mask = torch.zeros(face_model.n_vertices, device=face_model.tri.device)
    mask[face_model.tri.unique()] = 1.0
    return mask


def per_face_errors(
    pred_params: FaceParams, face: FaceOutput, batch: FaceBatch, vertex_mask: Tensor | None
) -> dict[str, Tensor]:
    """Every metric of :data:`METRIC_NAMES` per face, (B,) float64, NaN where the ground truth lacks it.

    Args:
        pred_params: predicted coefficients (B faces).
        face: the face model's output for them at the batch's crop size.
        batch: the ground truth (landmarks, vertices, coefficients where present).
        vertex_mask: (N,) vertex weights of the vertex errors (:func:`face_region_mask`), or None for all.
    """
    b = batch.batch_size
    nan = torch.full((b,), math.nan, dtype=torch.float64, device=batch.image.device)
    out = {name: nan.clone() for name in METRIC_NAMES}
    valid = batch.landmark_valid
    if bool(valid.any()):
        out["nme"][valid] = nme(face.landmarks_2d[valid].detach().float(), batch.landmarks[valid].float()).double()
    has_v = batch.target_valid("vertices")
    if batch.vertices is not None and batch.vertices.shape == face.vertices.shape and bool(has_v.any()):
        pred_v, gt_v = face.vertices.detach().float()[has_v], batch.vertices.float()[has_v]
        mask = None if vertex_mask is None else vertex_mask.to(pred_v.device)
        out["vertex_posed_mm"][has_v] = per_vertex_error(pred_v, gt_v, "none", mask).double()
        out["vertex_aligned_mm"][has_v] = per_vertex_error(pred_v, gt_v, "rigid", mask).double()
    layout = CoeffLayout(int(pred_params.id.shape[-1]), int(pred_params.exp.shape[-1]), int(pred_params.tex.shape[-1]))
    gt = batch.gt_params(layout)
    if gt is not None and bool(batch.params_valid.any()):
        groups = batch.group_valid()  # (B, G): a metric only where its coefficient group is ground truth
        ce = coefficient_errors(pred_params.detach().to(torch.float32), gt.to(torch.float32))
        for name, group, value in (
            ("id_rmse", "id", ce.id),
            ("exp_rmse", "exp", ce.exp),
            ("tex_rmse", "tex", ce.tex),
            ("sh_rmse", "sh", ce.sh),
            ("angles_deg", "angles", ce.angles_deg),
            ("yaw_deg", "angles", ce.yaw_deg),
            ("trans_mm", "trans", ce.trans_mm),
        ):
            ok = groups[:, GROUPS.index(group)]
            out[name][ok] = value.double()[ok]
    return out


@dataclass(frozen=True)
class HeldOutSummary:
    """Means over the evaluated faces (:data:`METRIC_NAMES`; NaN where no face had the ground truth).

    Attributes:
        values: metric name -> mean.
        count: number of faces evaluated.
    """

    values: dict[str, float] = field(default_factory=dict)
    count: int = 0

    def __getitem__(self, name: str) -> float:
        return self.values[name]

    def as_dict(self) -> dict[str, float | int]:
        """``{name: mean, ..., "count": n}`` (JSON-ready)."""
        return {**self.values, "count": self.count}


class HeldOutMetrics(Metric):
    """Accumulates :func:`per_face_errors` over batches (summed states: DDP-safe, float64).

    Args:
        vertex_mask: (N,) vertex weights of the vertex errors (:func:`face_region_mask`), or None for all.
        sync: reduce the sums across processes in :meth:`summary` (validation under DDP); False for an evaluation
            that runs in one process only (the end-of-training report on rank 0).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    sums: Tensor
    counts: Tensor
    faces: Tensor

    def __init__(self, vertex_mask: Tensor | None = None, sync: bool = True) -> None:
        super().__init__(sync_on_compute=sync)
        self.vertex_mask = vertex_mask
        n = len(METRIC_NAMES)
        self.add_state("sums", default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts", default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("faces", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred_params: FaceParams, face: FaceOutput, batch: FaceBatch) -> None:
        """Adds one batch (arguments as :func:`per_face_errors`)."""
        self.add_errors(per_face_errors(pred_params, face, batch, self.vertex_mask))

    def add_errors(self, errors: dict[str, Tensor]) -> None:
        """Adds per-face errors ``{name: (B,)}`` (NaN entries are skipped)."""
        sums = torch.zeros_like(self.sums)
        counts = torch.zeros_like(self.counts)
        for i, name in enumerate(METRIC_NAMES):
            value = errors.get(name)
            if value is None:
                continue
            v = value.detach().double().to(sums.device)
            finite = torch.isfinite(v)
            sums[i] = torch.where(finite, v, torch.zeros_like(v)).sum()
            counts[i] = finite.sum()
        self.sums += sums
        self.counts += counts
        self.faces += float(next(iter(errors.values())).numel()) if errors else 0.0

    def compute(self) -> Tensor:
        """Mean NME (0-dim; NaN before any update)."""
        return self.sums[0] / self.counts[0] if float(self.counts[0]) > 0 else torch.tensor(math.nan)

    def summary(self) -> HeldOutSummary:
        """All means (synchronised across processes under DDP)."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync, should_unsync=True):
            means = {
                name: float(s) / float(c) if float(c) > 0 else math.nan
                for name, s, c in zip(METRIC_NAMES, self.sums, self.counts)
            }
            count = int(self.faces)
        return HeldOutSummary(means, count)


def _predict(encoder: nn.Module | None, face_model: FaceModel, image: Tensor) -> tuple[FaceParams, FaceOutput]:
    if encoder is None:
        params = face_model.layout.zeros(int(image.shape[0]), device=image.device)
    else:
        params = encoder(image)
    return params, face_model(params, image_size=int(image.shape[-1]))


@torch.no_grad()
def evaluate(
    encoder: nn.Module | None,
    face_model: FaceModel,
    batches: Iterable[FaceBatch],
    device: torch.device | str = "cpu",
) -> HeldOutSummary:
    """Batch mode: the means of :data:`METRIC_NAMES` of a network on a split.

    Args:
        encoder: image (B, 3, S, S) -> :class:`FaceParams`, in eval mode; None = the untrained network's
            prediction (all-zero coefficients: the mean face, frontal, centred).
        face_model: the face model of the encoder's layout.
        batches: the split (e.g. a DataLoader of :class:`FaceBatch`); stand-in rows are left out.
        device: where to run.
    """
    # One process evaluates the whole split (e.g. rank 0 after DDP training): no cross-process reduction.
    metric = HeldOutMetrics(face_region_mask(face_model), sync=False).to(device)
    for batch in _genuine(batches):
        batch = batch.to(device)
        params, face = _predict(encoder, face_model, batch.image)
        metric.update(params, face, batch)
    return metric.summary()


def _genuine(batches: Iterable[FaceBatch]) -> Iterator[FaceBatch]:
    """The batches without the stand-ins of items that could not be loaded (:meth:`FaceBatch.genuine`); the
    dataset logged each failure."""
    for batch in batches:
        genuine = batch.genuine()
        if genuine is not None:
            yield genuine


@torch.no_grad()
def evaluate_per_face(
    encoder: nn.Module | None,
    face_model: FaceModel,
    batches: Iterable[FaceBatch],
    device: torch.device | str = "cpu",
) -> list[dict[str, float | int | str]]:
    """Per-face mode: one row per face: ``face`` (index), ``source``, ``gt_yaw_deg`` and :data:`METRIC_NAMES`.

    Arguments as :func:`evaluate`; the mean of a column over its finite rows is what :func:`evaluate` reports.
    """
    mask = face_region_mask(face_model).to(device)
    rows: list[dict[str, float | int | str]] = []
    for batch in _genuine(batches):
        batch = batch.to(device)
        params, face = _predict(encoder, face_model, batch.image)
        errors = {k: v.cpu().tolist() for k, v in per_face_errors(params, face, batch, mask).items()}
        for j in range(batch.batch_size):
            row: dict[str, float | int | str] = {
                "face": len(rows),
                "source": batch.source[j] if j < len(batch.source) else "",
                "gt_yaw_deg": float(batch.yaw[j]),
            }
            row.update({name: float(errors[name][j]) for name in METRIC_NAMES})
            rows.append(row)
    return rows
