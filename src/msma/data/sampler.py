"""``EpochSeededSampler``: the training order as a function of ``(seed, epoch)`` only."""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from torch.utils.data import RandomSampler


class EpochSeededSampler(RandomSampler):
    """A random permutation per epoch drawn from ``(seed, epoch)`` only.

    torch's ``RandomSampler`` draws its seed from the global generator when an epoch's iterator starts, so the
    data order depends on every random draw made before (validation loaders, augmentation, hooks) and a resumed
    run does not see the batches an uninterrupted run would. Lightning calls :meth:`set_epoch` at the start of
    every epoch (as for ``DistributedSampler``, which replaces this sampler under DDP and is epoch-seeded too).

    Args:
        data_source: the dataset.
        seed: the data seed.
    """

    def __init__(self, data_source: Sized, seed: int) -> None:
        super().__init__(data_source)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=gen).tolist()

    def __len__(self) -> int:
        return len(self.data_source)
