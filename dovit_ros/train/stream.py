"""The training sample stream: position p -> one augmented sample, and each rank's positions.

Determinism: the sample order of every epoch and each sample's augmentation are functions of
(seed, position in the sample stream) only, so a resumed run sees exactly the batches the
uninterrupted run would have, whatever the number of loader workers.
"""
from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset, Sampler

from ..data.transforms import TrainTransform


class StreamDataset(Dataset):
    """Position p in the infinite sample stream -> augmented (image, label)."""

    def __init__(self, ds, transform: TrainTransform, seed: int):
        self.ds, self.transform, self.seed = ds, transform, seed
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, p: int):
        L = len(self.ds)
        epoch, i = divmod(p, L)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(L))
        image, label = self.ds[int(self._perm[1][i])]
        return self.transform(image, label, np.random.default_rng([self.seed, 1, p]))


class StreamSampler(Sampler):
    """This rank's stream positions for steps [start, steps): rank r takes slice r of each
    global batch."""

    def __init__(self, start: int, steps: int, global_batch: int, rank: int, world: int):
        self.start, self.steps, self.gb = start, steps, global_batch
        self.rank, self.b = rank, global_batch // world

    def __iter__(self):
        for s in range(self.start, self.steps):
            base = s * self.gb + self.rank * self.b
            yield from range(base, base + self.b)

    def __len__(self):
        return (self.steps - self.start) * self.b
