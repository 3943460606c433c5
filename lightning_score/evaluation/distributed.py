"""Commands under ``torchrun``: ranks from the environment, a gloo group for one gather at the
end, and a shard of the data per rank.

Only evaluation commands use this (training has Lightning's strategies). Their collectives are
a single gather of small Python objects after all the work, so the group is always gloo (CPU):
it works beside any accelerator and never sits inside a solver loop where ranks could take
different numbers of steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lightning_score.config import launcher_int


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def device(self, name: str | None) -> torch.device:
        """``name``, else this rank's GPU when there are GPUs, else the CPU."""
        if name:
            return torch.device(name)
        return torch.device(f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu")


@contextmanager
def process_group() -> Iterator[Ranks]:
    """The ranks torchrun set (WORLD_SIZE, RANK, LOCAL_RANK), with a gloo group while inside."""
    ranks = Ranks(
        launcher_int("RANK", 0), launcher_int("WORLD_SIZE", 1), launcher_int("LOCAL_RANK", 0)
    )
    started = ranks.world_size > 1 and not dist.is_initialized()
    if started:
        dist.init_process_group(backend="gloo", rank=ranks.rank, world_size=ranks.world_size)
    try:
        yield ranks
    finally:
        if started:
            dist.destroy_process_group()


def shard_batches(num: int, batch_size: int, ranks: Ranks) -> list[int]:
    """The data indices of this rank: batch b (of ``batch_size`` consecutive indices) goes to
    rank b mod world_size, so each rank's batches are exactly the single-process batches."""
    return [
        i
        for first in range(ranks.rank * batch_size, num, ranks.world_size * batch_size)
        for i in range(first, min(first + batch_size, num))
    ]
