"""A cheap, clearly named sample-quality proxy for any data (2-D points, images): the sliced
Wasserstein distance."""

from __future__ import annotations

import torch
from torch import Tensor


def project(x: Tensor, projections: int = 128, seed: int = 0) -> Tensor:
    """``x`` (flattened, float64) on ``projections`` random unit directions fixed by ``seed``,
    shape (n, projections): what the distance compares, kept for resampling."""
    x = x.flatten(1).double()
    dirs = torch.randn(
        x.shape[1], projections, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    return x @ (dirs / dirs.norm(dim=0, keepdim=True))


def sliced_wasserstein(a: Tensor, b: Tensor, projections: int = 128, seed: int = 0) -> float:
    """Mean over random unit directions of the 1-D Wasserstein-1 distance of the projections of
    ``a`` and ``b`` (the first min(len(a), len(b)) rows of each, flattened)."""
    n = min(a.shape[0], b.shape[0])
    pa, pb = project(a[:n], projections, seed), project(b[:n], projections, seed)
    return (torch.sort(pa, 0).values - torch.sort(pb, 0).values).abs().mean().item()
