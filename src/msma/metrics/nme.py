"""Normalised mean error (NME) of 68 facial landmarks and the AFLW2000-3D benchmark protocol.

Protocol (3DDFA ``benchmark_aflw2000.py`` / ``calc_nme``; reused unchanged by 3DDFA_V2 and SynergyNet, the
numbers quoted in ``DESIGN.md``):

* per image, the mean Euclidean distance of the 68 predicted 2D landmarks to the ground truth, both in the
  **original image frame** (pixel-index units, x right, y down), divided by ``sqrt(w * h)`` of the axis-aligned
  box enclosing the 68 ground-truth points;
* images are binned by the absolute ground-truth yaw: ``|yaw| <= 30``, ``30 < |yaw| <= 60``, ``|yaw| > 60``
  degrees (3DDFA's ``ana_alfw``; with 3DDFA's yaw list the bins hold 1312 / 383 / 305 of the 2000 images);
* the headline number is the *balanced* mean: the mean of the three per-bin means. The plain mean over all
  images is reported too.

The 3D variant (:func:`nme_3d`) uses ``pt3d_68`` x, y, z. The depth origin of ``pt3d_68`` is arbitrary (the
annotation's z is the fitted model's depth in image-pixel scale, +z towards the viewer), so both point sets are
first centred in z (each minus its own mean z); the error is the mean 3D Euclidean distance, normalised by the
same ``sqrt(w * h)`` of the ground-truth x-y box as the 2D NME.

All functions return fractions (0.035 = 3.5 %); tables multiply by 100.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from torchmetrics import Metric

#: Upper edges (degrees, inclusive) of the first two yaw bins; the last bin is ``|yaw| > 60``.
YAW_BIN_EDGES: tuple[float, float] = (30.0, 60.0)
#: Names of the three yaw bins, in order.
YAW_BIN_NAMES: tuple[str, str, str] = ("0-30", "30-60", "60-90")
#: Bin counts of the full AFLW2000-3D benchmark with 3DDFA's yaw file (``DESIGN.md``).
AFLW2000_BIN_COUNTS_3DDFA: tuple[int, int, int] = (1312, 383, 305)


def _check_landmarks(name: str, points: Tensor, dims: tuple[int, ...]) -> None:
    if points.ndim != 3 or points.shape[-1] not in dims:
        raise ValueError(f"{name} must be (B, K, {'|'.join(map(str, dims))}), got {tuple(points.shape)}")


def landmark_box_size(gt: Tensor) -> Tensor:
    """``sqrt(w * h)`` of the axis-aligned box enclosing each ground-truth landmark set.

    Args:
        gt: (B, K, 2+) landmarks in pixels; only x and y (the first two columns) are used.

    Returns:
        (B,) box size in pixels.
    """
    _check_landmarks("gt", gt, (2, 3))
    xy = gt[..., :2]
    extent = xy.amax(dim=1) - xy.amin(dim=1)
    return torch.sqrt(extent[:, 0] * extent[:, 1])


def nme(pred: Tensor, gt: Tensor, normalizer: Tensor | None = None) -> Tensor:
    """Per-image 2D landmark NME.

    Args:
        pred: (B, K, 2) predicted landmarks in pixels (same frame as ``gt``; extra columns are ignored).
        gt: (B, K, 2) ground-truth landmarks in pixels (extra columns are ignored).
        normalizer: (B,) normalising length in pixels; default :func:`landmark_box_size` of ``gt``.

    Returns:
        (B,) mean point-to-point distance divided by the normaliser (a fraction, not percent).
    """
    _check_landmarks("pred", pred, (2, 3))
    _check_landmarks("gt", gt, (2, 3))
    if pred.shape[:2] != gt.shape[:2]:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} hold different landmark sets")
    norm = landmark_box_size(gt) if normalizer is None else normalizer
    dist = torch.linalg.vector_norm(pred[..., :2] - gt[..., :2], dim=-1).mean(dim=1)
    return dist / norm


def nme_3d(pred: Tensor, gt: Tensor, normalizer: Tensor | None = None) -> Tensor:
    """Per-image 3D landmark NME (AFLW2000-3D ``pt3d_68`` x, y, z), depth-centred.

    Args:
        pred: (B, K, 3) predicted landmarks: x, y in original-image pixels, z in the same pixel scale,
            +z towards the viewer (any depth origin).
        gt: (B, K, 3) ground truth in the same frame (``pt3d_68`` transposed).
        normalizer: (B,) normalising length; default ``sqrt(w * h)`` of the ground-truth x-y box.

    Returns:
        (B,) mean 3D distance after centring each set's z on its mean, divided by the normaliser.
    """
    _check_landmarks("pred", pred, (3,))
    _check_landmarks("gt", gt, (3,))
    if pred.shape != gt.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ")
    norm = landmark_box_size(gt) if normalizer is None else normalizer
    shift_p = torch.zeros_like(pred)
    shift_g = torch.zeros_like(gt)
    shift_p[..., 2] = pred[..., 2].mean(dim=1, keepdim=True)
    shift_g[..., 2] = gt[..., 2].mean(dim=1, keepdim=True)
    dist = torch.linalg.vector_norm((pred - shift_p) - (gt - shift_g), dim=-1).mean(dim=1)
    return dist / norm


def yaw_bin(yaw_deg: Tensor | float) -> Tensor:
    """AFLW2000-3D yaw bin of each absolute yaw: 0 (``<= 30``), 1 (``<= 60``), 2 (``> 60``); -1 for NaN.

    Args:
        yaw_deg: (B,) yaw in degrees (sign ignored), or a scalar.

    Returns:
        (B,) int64 bin indices (a 0-dim tensor for a scalar input).
    """
    yaw = torch.as_tensor(yaw_deg, dtype=torch.float64).abs()
    bins = torch.full(yaw.shape, 2, dtype=torch.int64, device=yaw.device)
    bins = torch.where(yaw <= YAW_BIN_EDGES[1], torch.ones_like(bins), bins)
    bins = torch.where(yaw <= YAW_BIN_EDGES[0], torch.zeros_like(bins), bins)
    return torch.where(torch.isnan(yaw), torch.full_like(bins, -1), bins)


def transform_points(points: Tensor, affine: Tensor) -> Tensor:
    """Applies 2D affine maps (e.g. ``FaceSample.crop_to_image``) to pixel coordinates.

    Args:
        points: (B, K, 2) or (B, K, 3) points in the source frame (pixels). A third column (depth in the
            same pixel scale) is multiplied by the map's isotropic scale ``sqrt(|det A|)``.
        affine: (B, 3, 3) or (B, 2, 3) homogeneous maps source -> target pixels.

    Returns:
        Points in the target frame, same shape as ``points``.
    """
    _check_landmarks("points", points, (2, 3))
    if affine.ndim != 3 or affine.shape[1:] not in ((3, 3), (2, 3)) or affine.shape[0] != points.shape[0]:
        raise ValueError(f"affine must be (B, 3, 3) or (B, 2, 3) with B={points.shape[0]}, got {tuple(affine.shape)}")
    a = affine[:, :2, :2].to(points.dtype)
    t = affine[:, :2, 2].to(points.dtype)
    xy = points[..., :2] @ a.transpose(1, 2) + t[:, None, :]
    if points.shape[-1] == 2:
        return xy
    scale = torch.sqrt(torch.linalg.det(a).abs())
    return torch.cat([xy, points[..., 2:] * scale[:, None, None]], dim=-1)


@dataclass(frozen=True)
class AFLW2000Result:
    """AFLW2000-3D NME summary, in percent.

    Attributes:
        bins: per-yaw-bin mean 2D NME (``YAW_BIN_NAMES`` order); NaN for an empty bin.
        counts: number of images per bin.
        balanced: mean of the three bin means (3DDFA's headline number); NaN if a bin is empty.
        mean: plain mean 2D NME over all images.
        mean_3d: plain mean 3D NME over the images that had 3D predictions; NaN if none.
        bins_3d: per-bin mean 3D NME.
        balanced_3d: mean of ``bins_3d``.
        count: number of images.
    """

    bins: tuple[float, float, float]
    counts: tuple[int, int, int]
    balanced: float
    mean: float
    mean_3d: float
    bins_3d: tuple[float, float, float]
    balanced_3d: float
    count: int

    def as_dict(self) -> dict[str, object]:
        """JSON-ready summary (percent values, plus the bin names)."""
        out: dict[str, object] = asdict(self)
        out["bin_names"] = list(YAW_BIN_NAMES)
        out["units"] = "percent of sqrt(w*h) of the ground-truth landmark box"
        return out


class AFLW2000NME(Metric):
    """AFLW2000-3D landmark NME accumulated over batches (DDP-safe: every state is a summed tensor).

    ``update`` takes predictions already in the original image frame (map crop predictions with
    :func:`transform_points` and ``FaceBatch.crop_to_image``).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    bin_sum: Tensor
    bin_count: Tensor
    bin_sum_3d: Tensor
    bin_count_3d: Tensor
    total_sum: Tensor
    total_count: Tensor
    total_sum_3d: Tensor
    total_count_3d: Tensor

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        z3 = torch.zeros(3, dtype=torch.float64)
        z = torch.zeros((), dtype=torch.float64)
        self.add_state("bin_sum", default=z3.clone(), dist_reduce_fx="sum")
        self.add_state("bin_count", default=z3.clone(), dist_reduce_fx="sum")
        self.add_state("bin_sum_3d", default=z3.clone(), dist_reduce_fx="sum")
        self.add_state("bin_count_3d", default=z3.clone(), dist_reduce_fx="sum")
        self.add_state("total_sum", default=z.clone(), dist_reduce_fx="sum")
        self.add_state("total_count", default=z.clone(), dist_reduce_fx="sum")
        self.add_state("total_sum_3d", default=z.clone(), dist_reduce_fx="sum")
        self.add_state("total_count_3d", default=z.clone(), dist_reduce_fx="sum")

    def update(
        self,
        pred: Tensor,
        gt: Tensor,
        yaw_deg: Tensor,
        pred_3d: Tensor | None = None,
        gt_3d: Tensor | None = None,
    ) -> None:
        """Adds a batch.

        Args:
            pred: (B, 68, 2) predicted landmarks, original-image pixels.
            gt: (B, 68, 2+) ground-truth landmarks (``pt3d_68`` x, y), original-image pixels.
            yaw_deg: (B,) ground-truth yaw in degrees; images with NaN yaw count in the plain mean only.
            pred_3d: optional (B, 68, 3) predicted x, y, z (see :func:`nme_3d`).
            gt_3d: optional (B, 68, 3) ground truth ``pt3d_68``; required with ``pred_3d``.
        """
        err = nme(pred, gt).to(torch.float64)
        bins = yaw_bin(yaw_deg.reshape(-1).to(err.device))
        if bins.shape[0] != err.shape[0]:
            raise ValueError(f"yaw_deg has {bins.shape[0]} entries for a batch of {err.shape[0]}")
        self._accumulate(err, bins, three_d=False)
        if pred_3d is not None:
            if gt_3d is None:
                raise ValueError("pred_3d given without gt_3d")
            self._accumulate(nme_3d(pred_3d, gt_3d).to(torch.float64), bins, three_d=True)

    def _accumulate(self, err: Tensor, bins: Tensor, three_d: bool) -> None:
        finite = torch.isfinite(err)
        err_f = torch.where(finite, err, torch.zeros_like(err))
        in_bin = (bins >= 0) & finite
        idx = bins.clamp_min(0)
        bin_sum = torch.zeros(3, dtype=torch.float64, device=err.device).index_add(0, idx, err_f * in_bin)
        bin_count = torch.zeros(3, dtype=torch.float64, device=err.device).index_add(0, idx, in_bin.double())
        if three_d:
            self.bin_sum_3d += bin_sum
            self.bin_count_3d += bin_count
            self.total_sum_3d += err_f.sum()
            self.total_count_3d += finite.sum()
        else:
            self.bin_sum += bin_sum
            self.bin_count += bin_count
            self.total_sum += err_f.sum()
            self.total_count += finite.sum()

    def compute(self) -> Tensor:
        """The headline number: balanced mean 2D NME in percent (0-dim float64; NaN while a bin is empty).

        The full breakdown is :meth:`summary` (torchmetrics' ``compute`` must return tensors).
        """
        return torch.tensor(self._summarize().balanced, dtype=torch.float64)

    def summary(self) -> AFLW2000Result:
        """Per-bin, balanced, plain and 3D means in percent, synchronised across processes under DDP."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync, should_unsync=True):
            return self._summarize()

    def _summarize(self) -> AFLW2000Result:
        nan = float("nan")

        def ratio(s: Tensor, c: Tensor) -> list[float]:
            return [100.0 * float(a) / float(b) if float(b) > 0 else nan for a, b in zip(s.reshape(-1), c.reshape(-1))]

        bins = ratio(self.bin_sum, self.bin_count)
        bins_3d = ratio(self.bin_sum_3d, self.bin_count_3d)
        counts = [int(c) for c in self.bin_count.tolist()]
        return AFLW2000Result(
            bins=(bins[0], bins[1], bins[2]),
            counts=(counts[0], counts[1], counts[2]),
            balanced=sum(bins) / 3.0,
            mean=ratio(self.total_sum, self.total_count)[0],
            mean_3d=ratio(self.total_sum_3d, self.total_count_3d)[0],
            bins_3d=(bins_3d[0], bins_3d[1], bins_3d[2]),
            balanced_3d=sum(bins_3d) / 3.0,
            count=int(self.total_count),
        )
