"""Mixed-source training data: several datasets behind one index, each sample tagged with its source and
restricted to the targets its source supervises.

:class:`MixedDataset` concatenates the sources (source ``s``'s item ``i`` is index ``offsets[s] + i``, the layout
:class:`~msma.data.sampler.MixedSourceSampler` draws from) and, per sample, sets
:attr:`~msma.data.batch.FaceSample.source_index` and applies :func:`restrict_targets` (``data.sources[s].supervises``).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Sequence, Sized

import torch
from torch.utils.data import Dataset

from msma.data.batch import FaceSample
from msma.data.config import check_supervises
from msma.face_model.params import GROUPS


def restrict_targets(sample: FaceSample, supervises: Sequence[str] | None) -> FaceSample:
    """``sample`` with the targets outside ``supervises`` removed (None: unchanged).

    ``"params"`` keeps every coefficient group the sample has; single group names keep those groups. Removed
    landmarks become NaN (``landmark_valid`` False); removed tensors become None.
    """
    if supervises is None:
        return sample
    keep = set(supervises)
    changes: dict[str, object] = {}
    if "landmarks" not in keep:
        changes["landmarks"] = torch.full_like(sample.landmarks, math.nan)
    for name in ("vertices", "skin_mask", "landmarks_3d", "dense"):
        if name not in keep and getattr(sample, name) is not None:
            changes[name] = None
    if sample.params is not None:
        have = sample.param_groups if sample.param_groups is not None else GROUPS
        groups = tuple(have) if "params" in keep else tuple(g for g in have if g in keep)
        if not groups:
            changes["params"] = None
            changes["param_groups"] = None
        elif tuple(groups) != tuple(have):
            changes["param_groups"] = groups
    return dataclasses.replace(sample, **changes) if changes else sample  # type: ignore[arg-type]


class MixedDataset(Dataset[FaceSample]):
    """Several datasets behind one index; samples carry their source index and only its supervised targets.

    Args:
        datasets: one dataset per source (sized).
        names: the sources' names (logging).
        supervises: per source, the targets it supervises (None: everything it provides).
    """

    def __init__(
        self,
        datasets: Sequence[Dataset[FaceSample]],
        names: Sequence[str],
        supervises: Sequence[Sequence[str] | None] | None = None,
    ) -> None:
        if not datasets or len(names) != len(datasets):
            raise ValueError(f"need one name per dataset, got {len(names)} names for {len(datasets)} datasets")
        self.datasets = list(datasets)
        self.names = list(names)
        self.supervises = list(supervises) if supervises is not None else [None] * len(datasets)
        for name, sup in zip(self.names, self.supervises):
            check_supervises(sup, f"source {name!r}")
        sizes = []
        for name, ds in zip(self.names, self.datasets):
            if not isinstance(ds, Sized):
                raise TypeError(f"source {name!r}: the dataset has no length")
            sizes.append(len(ds))
        self.sizes = sizes
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]

    def __len__(self) -> int:
        return sum(self.sizes)

    def locate(self, index: int) -> tuple[int, int]:
        """Dataset index -> (source, index within the source)."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        index %= n
        s = bisect.bisect_right(self.offsets, index) - 1
        while self.sizes[s] == 0:  # empty sources share their offset with the next one
            s += 1
        return s, index - self.offsets[s]

    def __getitem__(self, index: int) -> FaceSample:
        s, i = self.locate(index)
        sample = self.datasets[s][i]
        sample = restrict_targets(sample, self.supervises[s])
        return dataclasses.replace(sample, source_index=s)
