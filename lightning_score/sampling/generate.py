"""The one batched generator every caller uses (``lscore sample / evaluate / ablate``, the sample-grid
and evaluation callbacks): one noise stream per (seed, rank, batch), this rank's share of the
samples, batch by batch.

Batch b of rank r draws all its noise from ``batch_seed(seed, r, b)``, so no two batches or ranks
share noise, a run repeats exactly, and a sharded run (``world_size`` ranks) together draws
``num`` distinct samples.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_score.config import SamplingConfig
from lightning_score.progress import progress_bar
from lightning_score.sampling import sample
from lightning_score.sampling.base import Condition
from lightning_score.sampling.seeding import batch_seed, make_generator
from lightning_score.sde import SDE, ScoreFn


def rank_share(num: int, rank: int, world_size: int) -> int:
    """Samples drawn by ``rank`` of ``world_size``: an even split, the first ranks taking the rest."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world size={world_size}), got {rank}")
    return num // world_size + (rank < num % world_size)


@dataclass
class SampleBatch:
    """One batch of samples in model space, on the sampling device, and its true NFE."""

    samples: Tensor
    nfe: int


def stream_samples(
    score_fn: ScoreFn | None,
    sde: SDE,
    data_shape: Sequence[int],
    cfg: SamplingConfig,
    *,
    num: int,
    batch_size: int,
    seed: int = 0,
    rank: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    condition: Callable[[slice], Condition] | None = None,
    desc: str | None = None,
) -> Iterator[SampleBatch]:
    """``num`` samples (this rank's count) in batches of at most ``batch_size``; nothing beyond one
    batch is held, so 50,000 samples never sit in memory at once.

    ``condition`` conditions each batch (its labels, its measurements): given the slice of this
    rank's sample indices in the batch, it returns the batch's guided score (used instead of
    ``score_fn``, which may then be None) and projection hook. ``progress``: a bar counting
    samples (named ``desc``) over the sampler's own bar of steps."""
    if num <= 0 or batch_size <= 0:
        raise ValueError(
            f"the number of samples and the batch size must be positive, got {num}, {batch_size}"
        )
    device = torch.device(device)
    desc = desc or f"sampling ({cfg.sampler})"
    with progress_bar(total=num, desc=desc, unit="sample", enabled=progress) as bar:
        for b, first in enumerate(range(0, num, batch_size)):
            n = min(batch_size, num - first)
            gen = make_generator(batch_seed(seed, rank, b), device)
            if condition is not None:
                given = condition(slice(first, first + n))
            elif score_fn is not None:
                given = Condition(score_fn)
            else:
                raise ValueError("stream_samples needs a score_fn or a condition per batch")
            out = sample(
                given.score_fn,
                sde,
                (n, *data_shape),
                cfg,
                generator=gen,
                device=device,
                progress=progress,
                hook=given.hook,
            )
            bar.update(n)
            yield SampleBatch(out.samples, out.nfe)


@dataclass
class Generation:
    """``num`` samples (model space, on the CPU), the NFE of each batch and the wall time."""

    samples: Tensor
    batch_nfe: list[int]
    seconds: float

    @property
    def nfe(self) -> float:
        """Score evaluations per sample trajectory (a mean: adaptive solvers vary by batch)."""
        return sum(self.batch_nfe) / len(self.batch_nfe)


def generate(
    score_fn: ScoreFn | None,
    sde: SDE,
    data_shape: Sequence[int],
    cfg: SamplingConfig,
    *,
    num: int,
    batch_size: int,
    seed: int = 0,
    rank: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    condition: Callable[[slice], Condition] | None = None,
    desc: str | None = None,
) -> Generation:
    """All of :func:`stream_samples` collected on the CPU, with the wall time it took."""
    device = torch.device(device)
    chunks, batch_nfe = [], []
    start = time.perf_counter()
    for batch in stream_samples(
        score_fn,
        sde,
        data_shape,
        cfg,
        num=num,
        batch_size=batch_size,
        seed=seed,
        rank=rank,
        device=device,
        progress=progress,
        condition=condition,
        desc=desc,
    ):
        chunks.append(batch.samples.cpu())
        batch_nfe.append(batch.nfe)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return Generation(torch.cat(chunks), batch_nfe, time.perf_counter() - start)
