"""A training DataLoader that a resumed run continues exactly where the interrupted one stopped.

Lightning saves and restores the ``state_dict`` of any train loader that has one (its fit loop
treats it as stateful), so the loader's position travels in every checkpoint. Three things make a
resumed run replay an uninterrupted one:

* the order of an epoch is a pure function of ``(seed, epoch)`` (``DistributedSampler``, which
  also gives each rank its own shard; Lightning leaves a ``DistributedSampler`` in place);
* a restored loader skips the batches already consumed by dropping their indices in the sampler,
  so no skipped example is loaded;
* the random draws depend on a batch's position ``(seed, epoch, batch, rank)`` alone: the sampler
  hands each batch's position to the data set along with its indices, and the process that
  fetches the batch (the main one, or a DataLoader worker with ``data.num_workers > 0``, whose
  RNG state no checkpoint could hold) seeds torch, numpy and ``random`` from it before the random
  augmentation; the main process then seeds the training step's draws of t and noise from the
  same position (a second stream). Ranks draw differently; a run with workers draws exactly what
  it draws without them, and validation or sample grids in between change nothing.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

#: the two random streams of a batch: its augmentation (where it is fetched) and the training step
FETCH, STEP = 0, 1


def seed_batch_rng(seed: int, epoch: int, batch: int, rank: int, stream: int = FETCH) -> None:
    """Seed torch, numpy and ``random`` from a batch's position (well mixed by ``SeedSequence``)."""
    lo, hi = np.random.SeedSequence([seed, epoch, batch, rank, stream]).generate_state(2)
    torch.manual_seed((int(hi) << 32) | int(lo))
    np.random.seed(int(lo))
    random.seed(int(lo))


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled by ``seed + epoch``) that can start an epoch mid-way and
    yields ``(epoch, batch, index)``: each index with the position of the batch it goes into."""

    def __init__(
        self, dataset: Dataset, num_replicas: int, rank: int, seed: int, batch_size: int
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.batch_size = batch_size
        self.skip = 0  # indices to drop at the start of the next epoch, then reset

    def __iter__(self) -> Iterator[tuple[int, int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())
        skip, self.skip, epoch = self.skip, 0, self.epoch
        return (
            (epoch, (skip + k) // self.batch_size, index) for k, index in enumerate(indices[skip:])
        )


class PositionSeeded(Dataset):
    """Fetches a batch of ``(epoch, batch, index)`` items with the RNGs seeded from the batch's
    position first, in whichever process fetches it (DataLoader workers included)."""

    def __init__(self, dataset: Dataset, seed: int, rank: int) -> None:
        self.dataset, self.seed, self.rank = dataset, seed, rank

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitems__(self, items: list[tuple[int, int, int]]) -> list[Any]:
        epoch, batch, _ = items[0]
        seed_batch_rng(self.seed, epoch, batch, self.rank, FETCH)
        return [self.dataset[index] for _, _, index in items]


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
        sampler = ResumableSampler(dataset, num_replicas, rank, seed, batch_size)
        super().__init__(
            PositionSeeded(dataset, seed, rank), batch_size=batch_size, sampler=sampler, **kwargs
        )
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
            try:
                batch = next(batches)
            except StopIteration:
                return
            seed_batch_rng(self.seed, sampler.epoch, index, sampler.rank, STEP)
            self._position = index + 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        # Lightning's fetcher does not prefetch from a loader with a length, so every batch
        # handed out has been trained on when a checkpoint is written.
        return {"position": self._position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        # A checkpoint from the last batch of an epoch resumes at the start of the next one.
        self._resume_at = state["position"] if state["position"] < len(self) else 0
