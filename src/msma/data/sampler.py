"""Training orders as functions of ``(seed, epoch)`` only: ``EpochSeededSampler`` (one source) and
``MixedSourceSampler`` (several sources with sampling weights, DDP-aware)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence, Sized

import torch
from torch import Tensor
from torch.utils.data import DistributedSampler, RandomSampler


class EpochSeededSampler(RandomSampler):
    """A random permutation per epoch drawn from ``(seed, epoch)`` only.

    torch's ``RandomSampler`` draws its seed from the global generator when an epoch's iterator starts, so the
    data order depends on every random draw made before (validation loaders, augmentation, hooks) and a resumed
    run does not see the batches an uninterrupted run would. Lightning calls :meth:`set_epoch` at the start of
    every epoch (as for ``DistributedSampler``, which replaces this sampler under DDP and is epoch-seeded too).

    Args:
        data_source: the dataset.
        seed: the data seed.
        epoch_keys: yield ``epoch * len + index`` instead of ``index`` (for a dataset that seeds its augmentation
            by epoch and sample, :class:`~msma.data.subset.TransformedSubset`).
    """

    def __init__(self, data_source: Sized, seed: int, epoch_keys: bool = False) -> None:
        super().__init__(data_source)
        self.seed = int(seed)
        self.epoch = 0
        self.epoch_keys = bool(epoch_keys)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.data_source), generator=gen).tolist()
        offset = self.epoch * len(self.data_source) if self.epoch_keys else 0
        yield from (offset + i for i in order)

    def __len__(self) -> int:
        return len(self.data_source)


def source_counts(sizes: Sequence[int], weights: Sequence[float] | None, total: int) -> list[int]:
    """Samples of each source in an epoch of ``total``: ``total * w_s / sum(w)`` rounded by largest remainder.

    Args:
        sizes: samples per source (the natural weights when ``weights`` is None).
        weights: sampling weight per source (>= 0, not all 0), or None.
        total: samples in the epoch.

    Returns:
        Counts per source summing to ``total``.
    """
    w = [float(x) for x in (sizes if weights is None else weights)]
    if len(w) != len(sizes) or any(x < 0 or not math.isfinite(x) for x in w) or sum(w) <= 0:
        raise ValueError(f"source weights must be finite, >= 0 and not all 0, one per source; got {list(w)}")
    share = [total * x / sum(w) for x in w]
    counts = [math.floor(x) for x in share]
    order = sorted(range(len(w)), key=lambda i: (-(share[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


class MixedSourceSampler(DistributedSampler):  # type: ignore[type-arg]
    """Weighted, deterministic, resumable order over the concatenation of several sources.

    Each epoch draws ``counts = source_counts(sizes, weights, epoch_samples)`` samples of each source: a source
    drawn at most its size gets distinct samples (a fresh permutation), a larger share cycles through fresh
    permutations; the sources' turns are then shuffled together. Everything is drawn from one generator seeded by
    ``(seed, epoch)`` only, so a resumed run sees the batches an uninterrupted one would. Under DDP (``num_replicas``
    > 1) the epoch's sequence is padded to a multiple of the replicas (by repeating its start) and rank ``r`` takes
    positions ``r, r + R, ...``: the ranks' shares are disjoint positions of one sequence, and disjoint samples
    whenever no source is drawn more than its size. It is a ``DistributedSampler`` so that Lightning keeps it
    (and calls :meth:`set_epoch`) instead of wrapping it in its own.

    Args:
        sizes: samples per source; the dataset index of source ``s``'s item ``i`` is ``sum(sizes[:s]) + i``.
        weights: sampling weights per source, or None for the natural proportions.
        seed: the data seed.
        epoch_samples: samples per epoch over all ranks (None: ``sum(sizes)``).
        num_replicas: DDP world size.
        rank: this process's rank.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float] | None,
        seed: int,
        epoch_samples: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if not sizes or any(int(n) < 0 for n in sizes):
            raise ValueError(f"source sizes must be >= 0, got {list(sizes)}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in a world of {num_replicas}")
        self.sizes = [int(n) for n in sizes]
        total = int(epoch_samples) if epoch_samples is not None else sum(self.sizes)
        if total < 1:
            raise ValueError(f"an epoch needs at least one sample, got {total}")
        w = list(self.sizes) if weights is None else [float(x) for x in weights]
        # An empty source cannot be drawn from.
        w = [x if n > 0 else 0.0 for x, n in zip(w, self.sizes)]
        self.counts = source_counts(self.sizes, w, total)
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self.epoch_samples = total
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.seed = int(seed)
        self.epoch = 0
        self.num_samples = math.ceil(total / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas
        self.shuffle = True
        self.drop_last = False

    def epoch_order(self) -> list[int]:
        """The whole epoch's dataset indices (every rank's, before the split)."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        picks: list[Tensor] = []
        for s, (n, c) in enumerate(zip(self.sizes, self.counts)):
            if c == 0:
                continue
            cycles = [torch.randperm(n, generator=gen) for _ in range(math.ceil(c / n))]
            picks.append(torch.cat(cycles)[:c] + self.offsets[s])
        flat = torch.cat(picks)
        order = torch.randperm(flat.numel(), generator=gen)
        return flat[order].tolist()

    def __iter__(self) -> Iterator[int]:
        order = self.epoch_order()
        while len(order) < self.total_size:
            order += order[: self.total_size - len(order)]
        yield from order[self.rank : self.total_size : self.num_replicas]

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
