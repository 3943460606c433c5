"""Conditioned sampling in batches: each batch gets its own guided score and projection hook.

Conditioning composes with the samplers through two seams only (``sampling.sample``): a
``score_fn`` (guidance wraps it) and a step ``hook`` (projections). :func:`sample_conditioned`
runs many samples in batches, asking the caller for the batch's conditioning (its labels, its
measurements), with one noise stream per batch as everywhere else (``batch_seed``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lightning_score.config import SamplingConfig
from lightning_score.sampling import SampleResult, StepHook, batch_seed, make_generator, sample
from lightning_score.sde import SDE, ScoreFn


@dataclass
class Condition:
    """What conditions one batch: the (guided) score and an optional projection hook."""

    score_fn: ScoreFn
    hook: StepHook | None = None


def sample_conditioned(
    condition_for: Callable[[slice], Condition],
    sde: SDE,
    data_shape: Sequence[int],
    cfg: SamplingConfig,
    *,
    num: int,
    batch_size: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> SampleResult:
    """``num`` samples; samples ``i`` of batch b are conditioned by ``condition_for(slice)`` (the
    slice of sample indices in that batch) and draw their noise from ``batch_seed(seed, 0, b)``.
    Returns the samples on the CPU and the NFE per trajectory (the mean over batches)."""
    if num <= 0 or batch_size <= 0:
        raise ValueError(
            f"the number of samples and the batch size must be positive, got {num}, {batch_size}"
        )
    device = torch.device(device)
    chunks, nfes = [], []
    for b, first in enumerate(range(0, num, batch_size)):
        part = slice(first, min(first + batch_size, num))
        condition = condition_for(part)
        out = sample(
            condition.score_fn,
            sde,
            (part.stop - part.start, *data_shape),
            cfg,
            generator=make_generator(batch_seed(seed, 0, b), device),
            device=device,
            progress=progress,
            hook=condition.hook,
        )
        chunks.append(out.samples.cpu())
        nfes.append(out.nfe)
    return SampleResult(torch.cat(chunks), round(sum(nfes) / len(nfes)))
