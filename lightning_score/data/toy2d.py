"""2-D toy distributions with exact samplers (and a density for the Gaussian mixture)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: the 8-Gaussian ring: centres on a circle of radius 2, std 0.2 each
RING_RADIUS, RING_STD, RING_MODES = 2.0, 0.2, 8


def ring_centres() -> Tensor:
    angles = torch.arange(RING_MODES) * (2 * math.pi / RING_MODES)
    return RING_RADIUS * torch.stack([angles.cos(), angles.sin()], dim=1)


def gaussian_mixture(n: int, generator: torch.Generator) -> Tensor:
    idx = torch.randint(RING_MODES, (n,), generator=generator)
    return ring_centres()[idx] + RING_STD * torch.randn(n, 2, generator=generator)


def gaussian_mixture_log_prob(x: Tensor) -> Tensor:
    """Exact log density of :func:`gaussian_mixture` (for likelihood checks)."""
    d2 = (x[:, None, :] - ring_centres().to(x)[None]).pow(2).sum(-1)
    log_comp = -d2 / (2 * RING_STD**2) - math.log(2 * math.pi * RING_STD**2)
    return torch.logsumexp(log_comp, dim=1) - math.log(RING_MODES)


def checkerboard(n: int, generator: torch.Generator) -> Tensor:
    """Uniform on the black squares of a 4x4 board on [-2, 2]^2."""
    x1 = torch.rand(n, generator=generator) * 4 - 2
    x2 = torch.rand(n, generator=generator) - torch.randint(2, (n,), generator=generator) * 2.0
    x2 = x2 + (torch.floor(x1) % 2)
    return torch.stack([x1, x2], dim=1)


def swiss_roll(n: int, generator: torch.Generator) -> Tensor:
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
    pts = torch.stack([t * t.cos(), t * t.sin()], dim=1) / 5.0
    return pts + 0.05 * torch.randn(n, 2, generator=generator)


TOY_SETS = {
    "gaussian_mixture": gaussian_mixture,
    "checkerboard": checkerboard,
    "swiss_roll": swiss_roll,
}
