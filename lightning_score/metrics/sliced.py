"""A cheap, clearly named sample-quality proxy for any data (2-D points, images): the sliced
Wasserstein distance."""

from __future__ import annotations

import torch
from torch import Tensor


def sliced_wasserstein(a: Tensor, b: Tensor, projections: int = 128, seed: int = 0) -> float:
    """Mean over random unit directions of the 1-D Wasserstein-1 distance of the projections of
    ``a`` and ``b`` (the first min(len(a), len(b)) rows of each, flattened)."""
    n = min(a.shape[0], b.shape[0])
    a, b = a[:n].flatten(1).double(), b[:n].flatten(1).double()
    dirs = torch.randn(
        a.shape[1], projections, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    return (torch.sort(a @ dirs, 0).values - torch.sort(b @ dirs, 0).values).abs().mean().item()
