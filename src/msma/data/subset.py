"""``TransformedSubset``: a subset of a face dataset with its own, optionally seeded, sample transform.

The training split of every dataset kind is one (augmented), its validation split another (no transform); with a seed
the augmentation of each sample is a function of ``(seed, epoch, sample)``, which makes resumed runs exact
(:class:`~msma.data.sampler.EpochSeededSampler` with ``epoch_keys=True``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch.utils.data import Dataset

from msma.data.batch import FaceSample

#: A sample transform (``FaceAugment`` and friends): one sample in, one sample out.
Transform = Callable[[FaceSample], FaceSample]


class TransformedSubset(Dataset[FaceSample]):
    """A subset of a dataset with its own sample transform (train augmentation vs. plain validation).

    With ``seed`` the transform is called as ``transform(sample, seed=k)`` with ``k`` a function of ``(seed, epoch,
    index)``, and the subset also accepts *epoch keys* ``epoch * len(self) + index`` (what
    :class:`~msma.data.sampler.EpochSeededSampler` yields with ``epoch_keys=True``): the augmentation of every
    sample is then a function of the run's seed, the epoch and the sample, so a run resumed mid-epoch repeats the
    uninterrupted run's augmentations exactly. A plain index is epoch 0 (under DDP, whose sampler yields plain
    indices, each sample keeps one augmentation for the whole run).

    Args:
        dataset: the base dataset (its own ``transform`` should be None).
        indices: the subset's indices into ``dataset``.
        transform: applied to each sample, or None.
        seed: the augmentation seed (None: the transform draws from torch's global generator).
    """

    def __init__(
        self,
        dataset: Dataset[FaceSample],
        indices: Sequence[int],
        transform: Transform | None,
        seed: int | None = None,
    ) -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.transform = transform
        self.seed = None if seed is None or transform is None else int(seed)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> FaceSample:
        if self.seed is None:
            sample = self.dataset[self.indices[index]]
            return self.transform(sample) if self.transform is not None else sample
        if index < 0:
            raise IndexError(f"TransformedSubset: negative key {index}")
        epoch, i = divmod(int(index), len(self.indices))
        sample = self.dataset[self.indices[i]]
        assert self.transform is not None
        key = (self.seed * 1_000_003 + epoch) * 10_000_019 + i
        return self.transform(sample, seed=key % (2**31 - 1))  # type: ignore[call-arg]
