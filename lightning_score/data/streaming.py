"""``data.name=streaming``: images in LitData chunks (``lscore prepare``), read from a folder or
streamed from a bucket (s3://, gs://) through a size-limited local cache.

LitData shards the chunks over ranks (DDP, multi-node) and loader workers, reshuffles every epoch
from ``seed``, and its ``StreamingDataLoader`` has a ``state_dict`` that Lightning saves in every
checkpoint, so a resumed run skips what was trained on. What LitData cannot know, the random
draws, follows :mod:`lightning_score.data.resumable`: a flip is a function of (seed, epoch, sample)
wherever it is drawn (a loader worker included), and the training step's draws are seeded from
the batch's position, so a resumed run replays an uninterrupted one batch for batch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from litdata import StreamingDataLoader, StreamingDataset
from litdata.streaming.sampler import ChunkedIndex
from litdata.utilities.format import _convert_bytes_to_int
from torch import Tensor

from lightning_score.config import ConfigError, DataConfig, require
from lightning_score.data.base import DataNotFoundError, ScoreDataModule
from lightning_score.data.resumable import STEP, seed_batch_rng

#: URI schemes LitData streams from (anything else is a local folder)
REMOTE_SCHEMES = ("s3://", "gs://", "azure://", "hf://")
#: the split folders ``lscore prepare`` writes below its output
SPLITS = {"train": "train", "val": "val"}


class ChunkError(DataNotFoundError):
    """A chunk listed in a LitData index is missing or damaged; the message names it."""


def is_remote(uri: str) -> bool:
    return uri.startswith(REMOTE_SCHEMES)


def split_uri(input_dir: str, split: str) -> str:
    return f"{input_dir.rstrip('/')}/{SPLITS[split]}"


def check_local_chunks(folder: Path) -> dict[str, Any]:
    """The index of a local chunk folder, after checking that every chunk it lists is there,
    whole: a missing or cut-short chunk is named before training starts, not hours into it."""
    index = folder / "index.json"
    if not index.is_file():
        raise DataNotFoundError(
            f"no LitData index at {index}: write the chunks with "
            f"`lscore prepare SOURCE --out {folder.parent}`, or set data.input_dir"
        )
    try:
        meta = json.loads(index.read_text())
        chunks = meta["chunks"]
    except (ValueError, KeyError) as err:
        raise ChunkError(
            f"{index} is damaged ({err}): write the chunks again with `lscore prepare`"
        ) from None
    for chunk in chunks:
        path = folder / chunk["filename"]
        if not path.is_file():
            raise ChunkError(
                f"chunk {path} listed in {index} is missing: copy it back or run "
                "`lscore prepare` again"
            )
        if path.stat().st_size != chunk["chunk_bytes"]:
            raise ChunkError(
                f"chunk {path} is damaged ({path.stat().st_size} bytes, the index says "
                f"{chunk['chunk_bytes']}): copy it again or run `lscore prepare` again"
            )
    return meta


def check_cache_limit(meta: dict[str, Any], cache_limit: str, where: str) -> int:
    """The cache limit in bytes, refused when one chunk would not fit (LitData would then evict
    the chunk it is reading)."""
    try:
        limit = _convert_bytes_to_int(cache_limit) if isinstance(cache_limit, str) else cache_limit
    except (ValueError, KeyError):
        raise ConfigError(
            f"data.cache_limit={cache_limit!r} is not a size: write e.g. 50GB or 500MB"
        ) from None
    largest = max((c["chunk_bytes"] for c in meta["chunks"]), default=0)
    require(
        limit >= 2 * largest,
        f"data.cache_limit={cache_limit} cannot hold two chunks of {where} (the largest is "
        f"{largest / 1e6:.1f} MB: one read, one downloaded ahead): raise data.cache_limit",
    )
    return limit


class StreamingImages(StreamingDataset):
    """uint8 images of a chunk folder as float [0, 1] at ``size``, with flips drawn from
    (seed, epoch, sample) alone."""

    def __init__(
        self, input_dir: str, cfg: DataConfig, seed: int, shuffle: bool, random_flip: bool
    ) -> None:
        cache = cfg.cache_dir or None
        limit = cfg.cache_limit
        try:
            super().__init__(
                input_dir, cache_dir=cache, shuffle=shuffle, seed=seed, max_cache_size=limit
            )
        except (OSError, RuntimeError, ValueError) as err:
            raise DataNotFoundError(_remote_reason(input_dir, err)) from None
        except Exception as err:  # botocore / gcsfs errors do not derive from OSError
            if type(err).__module__.split(".")[0] in {"botocore", "boto3", "google", "obstore"}:
                raise DataNotFoundError(_remote_reason(input_dir, err)) from None
            raise
        if is_remote(input_dir):
            meta = json.loads((Path(self.input_dir.path) / "index.json").read_text())
            check_cache_limit(meta, limit, input_dir)
        self.size, self.channels = cfg.image_size, cfg.channels
        self.flip_seed, self.random_flip = seed, random_flip

    def __getitem__(self, index: ChunkedIndex | int) -> tuple[Tensor, int]:  # type: ignore[override]
        try:
            item = super().__getitem__(index)
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            chunk = getattr(index, "chunk_index", None)
            raise ChunkError(
                f"chunk {chunk} of {self.input_dir.url or self.input_dir.path} cannot be read "
                f"({str(err).splitlines()[0] if str(err) else type(err).__name__}): run "
                "`lscore prepare` again"
            ) from None
        image = torch.as_tensor(item["image"])
        if image.shape[0] != self.channels:
            raise ValueError(
                f"the chunks hold {image.shape[0]}-channel images but data.channels="
                f"{self.channels}: set data.channels={image.shape[0]}"
            )
        x = image.float().div_(255.0).unsqueeze(0)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True)
        x = x.squeeze(0).clamp_(0, 1)
        sample = index.index if isinstance(index, ChunkedIndex) else int(index)
        if self.random_flip and _coin(self.flip_seed, self.current_epoch, sample):
            x = x.flip(-1)
        return x, int(item["label"])


def _coin(seed: int, epoch: int, sample: int) -> bool:
    """A fair coin that depends on (seed, epoch, sample) only."""
    return bool(np.random.SeedSequence([seed, epoch, sample]).generate_state(1)[0] & 1)


def _remote_reason(uri: str, err: BaseException) -> str:
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    if is_remote(uri):
        return (
            f"cannot read {uri} ({reason}): check the network and the credentials "
            "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE for s3://, "
            "GOOGLE_APPLICATION_CREDENTIALS for gs://) and that `lscore prepare` wrote there"
        )
    return f"cannot read the chunks in {uri} ({reason}): run `lscore prepare` again"


class ResumableStreamingLoader(StreamingDataLoader):
    """LitData's loader (its position saved in checkpoints), seeding the training step's draws
    from each batch's position as :class:`~lightning_score.data.resumable.ResumableDataLoader`."""

    def __init__(self, dataset: StreamingImages, batch_size: int, rank: int, **kwargs: Any):
        super().__init__(dataset, batch_size=batch_size, **kwargs)
        self.rank = rank

    def __iter__(self) -> Any:
        dataset: StreamingImages = self.dataset  # type: ignore[assignment]
        for batch in super().__iter__():
            index = self._num_samples_yielded_streaming // self.batch_size - 1  # type: ignore
            seed_batch_rng(dataset.flip_seed, self.current_epoch, index, self.rank, STEP)
            if index + 1 >= len(self):
                # Lightning stops at the known length without asking for more, so LitData never
                # sees a restored epoch end and would replay it: the next epoch starts afresh.
                self.restore = False
            yield batch


class StreamingDataModule(ScoreDataModule):
    """Train and val chunk folders below ``data.input_dir``, read through LitData's loader."""

    def __init__(self, cfg: DataConfig, seed: int) -> None:
        shape = (cfg.channels, cfg.image_size, cfg.image_size)
        super().__init__(cfg, shape, self._splits, seed)

    def _splits(self) -> tuple[StreamingImages, StreamingImages]:
        cfg = self.cfg
        require(
            bool(cfg.input_dir),
            "data.name=streaming needs data.input_dir: a folder or s3:// gs:// URI written by "
            "`lscore prepare`",
        )
        if not is_remote(cfg.input_dir):
            for split in SPLITS:
                check_local_chunks(Path(split_uri(cfg.input_dir, split)))
        elif cfg.cache_dir:
            os.makedirs(cfg.cache_dir, exist_ok=True)
        train = StreamingImages(
            split_uri(cfg.input_dir, "train"), cfg, self.seed, True, cfg.random_flip
        )
        val = StreamingImages(split_uri(cfg.input_dir, "val"), cfg, self.seed, False, False)
        return train, val

    def train_dataloader(self) -> StreamingDataLoader:
        assert self.train_set is not None, "call setup() first"
        trainer = self.trainer
        return ResumableStreamingLoader(
            self.train_set,  # type: ignore[arg-type]
            batch_size=self.per_device_batch_size(),
            rank=trainer.global_rank if trainer is not None else 0,
            num_workers=self.cfg.num_workers,
            drop_last=True,
            pin_memory=self.pin_memory(),
        )

    def val_dataloader(self) -> StreamingDataLoader:
        assert self.val_set is not None, "call setup() first"
        return StreamingDataLoader(
            self.val_set,  # type: ignore[arg-type]
            batch_size=self.per_device_batch_size(),
            num_workers=self.cfg.num_workers,
            pin_memory=self.pin_memory(),
        )
