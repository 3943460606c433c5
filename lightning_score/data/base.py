"""Shared LightningDataModule for every data set: splits, per-rank batch size, loaders.

Data modules yield ``(x, y)`` with images as float tensors in [0, 1] (NCHW) and toy points as
float vectors. Mapping images into the range a model sees is the SDE's job
(:meth:`lightning_score.sde.SDE.scale_data`), so no data set knows about SDEs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_score.config import DataConfig
from lightning_score.data.resumable import ResumableDataLoader


class DataNotFoundError(FileNotFoundError):
    """A data set is missing on disk; the message says how to get it."""


class ScoreDataModule(L.LightningDataModule):
    """Wraps a ``(train, val)`` pair of Datasets built lazily by ``make_splits``."""

    def __init__(
        self,
        cfg: DataConfig,
        data_shape: Sequence[int],
        make_splits: Callable[[], tuple[Dataset, Dataset]],
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.data_shape = tuple(data_shape)
        self._make_splits = make_splits
        self.seed = seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    @property
    def is_image(self) -> bool:
        return len(self.data_shape) == 3

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set = self._make_splits()

    def per_device_batch_size(self) -> int:
        """``data.batch_size`` is the global batch, as in the paper; split it across ranks."""
        world = self.trainer.world_size if self.trainer is not None else 1
        return max(1, self.cfg.batch_size // world)

    def pin_memory(self) -> bool:
        """Page-locked batches when training on a GPU: Lightning copies batches to the device with
        ``non_blocking=True``, which is asynchronous only from page-locked memory (from pageable
        memory the copy waits for the GPU to finish its queued work)."""
        trainer = self.trainer
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def train_dataloader(self) -> DataLoader:
        """Shuffled per (seed, epoch), one shard per rank, resumable mid-epoch from a checkpoint."""
        assert self.train_set is not None, "call setup() first"
        batch_size = self.per_device_batch_size()
        trainer = self.trainer
        return ResumableDataLoader(
            self.train_set,
            batch_size=batch_size,
            seed=self.seed,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            drop_last=len(self.train_set) >= batch_size,  # type: ignore[arg-type]
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
            pin_memory=self.pin_memory(),
        )

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "call setup() first"
        return DataLoader(
            self.val_set,
            batch_size=self.per_device_batch_size(),
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
            pin_memory=self.pin_memory(),
        )


def split_fraction(dataset: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Deterministic train/val split for sets without an official validation split."""
    n = len(dataset)  # type: ignore[arg-type]
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    return torch.utils.data.Subset(dataset, train_idx), torch.utils.data.Subset(dataset, val_idx)
