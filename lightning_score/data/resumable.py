"""A training DataLoader that a resumed run continues exactly where the interrupted one stopped.

Lightning saves and restores the ``state_dict`` of any train loader that has one (its fit loop
treats it as stateful), so the loader's position travels in every checkpoint. Three things make a
resumed run replay an uninterrupted one:

* the order of an epoch is a pure function of ``(seed, epoch)`` (``DistributedSampler``, which
  also gives each rank its own shard; Lightning leaves a ``DistributedSampler`` in place);
* a restored loader skips the batches already consumed by dropping their indices in the sampler,
  so no skipped example is loaded;
* before each batch is fetched, the process RNGs (torch, numpy, random) are seeded from
  ``(seed, epoch, batch, rank)``. Random augmentation at fetch time and the training step's draws
  of t and noise then depend only on the batch's position, not on whatever validation or sample
  grids drew in between; ranks draw different t and noise.

Augmentation inside DataLoader worker processes (``data.num_workers > 0``) uses the workers' own
RNGs, whose state is not restored: with workers and random augmentation, a resumed run is a
valid continuation but not bit-identical.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def seed_batch_rng(seed: int, epoch: int, batch: int, rank: int) -> None:
    """Seed torch, numpy and ``random`` from a batch's position (well mixed by ``SeedSequence``)."""
    lo, hi = np.random.SeedSequence([seed, epoch, batch, rank]).generate_state(2)
    torch.manual_seed((int(hi) << 32) | int(lo))
    np.random.seed(int(lo))
    random.seed(int(lo))


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled by ``seed + epoch``) that can start an epoch mid-way."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.skip = 0  # indices to drop at the start of the next epoch, then reset

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])


class ResumableDataLoader(DataLoader):
    """Shuffled, rank-sharded train loader whose position Lightning saves and restores."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        **kwargs: Any,
    ) -> None:
        sampler = ResumableSampler(dataset, num_replicas=num_replicas, rank=rank, seed=seed)
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self.seed = seed
        self._position = 0  # batches of the current epoch handed to the trainer
        self._resume_at = 0

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        # A generator: nothing runs until the first batch is asked for, after Lightning has called
        # ``sampler.set_epoch`` for the epoch, also when it created the iterator before a restore.
        start, self._resume_at = self._resume_at, 0
        self._position = start
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        sampler.skip = start * self.batch_size  # type: ignore[operator]
        batches = super().__iter__()
        for index in range(start, len(self)):
            seed_batch_rng(self.seed, sampler.epoch, index, sampler.rank)
            try:
                batch = next(batches)
            except StopIteration:
                return
            self._position = index + 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        # Lightning's fetcher does not prefetch from a loader with a length, so every batch
        # handed out has been trained on when a checkpoint is written.
        return {"position": self._position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        # A checkpoint from the last batch of an epoch resumes at the start of the next one.
        self._resume_at = state["position"] if state["position"] < len(self) else 0
