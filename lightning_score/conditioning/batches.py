"""Conditioned sampling in batches: each batch gets its own guided score and projection hook.

Conditioning composes with the samplers through two seams only (``sampling.sample``): a
``score_fn`` (guidance wraps it) and a step ``hook`` (projections). :func:`sample_conditioned`
collects the one streaming generator's batches (``sampling.generate.generate``), asking the
caller for each batch's conditioning (its labels, its measurements).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lightning_score.config import SamplingConfig
from lightning_score.sampling import SampleResult
from lightning_score.sampling.base import Condition
from lightning_score.sampling.generate import generate
from lightning_score.sde import SDE


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
    """``num`` samples; the samples of a batch are conditioned by ``condition_for(slice)`` (the
    slice of sample indices in that batch), with noise from ``batch_seed(seed, 0, b)``.
    Returns the samples on the CPU and the NFE per trajectory (the mean over batches)."""
    out = generate(
        None,  # every batch's score comes from condition_for
        sde,
        data_shape,
        cfg,
        num=num,
        batch_size=batch_size,
        seed=seed,
        device=device,
        progress=progress,
        condition=condition_for,
    )
    return SampleResult(out.samples, round(out.nfe))


__all__ = ["Condition", "sample_conditioned"]
