"""Time grids from T down to eps for every fixed-step sampler.

Schedules are defined on the noise-to-signal ratio sigma(t) = std(t) / alpha(t) (EDM's sigma; for VE
it is sigma(t) itself) and mapped back to t by bisection on ``sde.marginal_prob``, so they work
for any SDE whose sigma(t) increases, without a second copy of its schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from lightning_score.registry import lookup
from lightning_score.sde import SDE


def edm_sigma(sde: SDE, t: Tensor) -> Tensor:
    """sigma(t) = std(t) / alpha(t) for a ``(K,)`` tensor of times."""
    mean, std = sde.marginal_prob(torch.ones(t.shape[0], 1, dtype=t.dtype, device=t.device), t)
    return std / mean.reshape(-1)


def time_of_sigma(sde: SDE, sigma: Tensor, eps: float, iters: int = 80) -> Tensor:
    """Invert :func:`edm_sigma` on [eps, T] by bisection (float64, 80 halvings: exact to rounding)."""
    lo = torch.full_like(sigma, eps)
    hi = torch.full_like(sigma, sde.T)
    for _ in range(iters):
        mid = (lo + hi) / 2
        above = edm_sigma(sde, mid) > sigma
        hi = torch.where(above, mid, hi)
        lo = torch.where(above, lo, mid)
    return (lo + hi) / 2


def uniform(sde: SDE, steps: int, eps: float, rho: float) -> Tensor:
    """Uniform in t, the paper's grid."""
    return torch.linspace(sde.T, eps, steps + 1, dtype=torch.float64)


def log_sigma(sde: SDE, steps: int, eps: float, rho: float) -> Tensor:
    """Uniform in log sigma (for VE this equals the uniform grid)."""
    ends = edm_sigma(sde, torch.tensor([sde.T, eps], dtype=torch.float64))
    sigmas = torch.exp(
        torch.linspace(math.log(ends[0]), math.log(ends[1]), steps + 1, dtype=torch.float64)
    )
    return _to_times(sde, sigmas, eps)


def edm(sde: SDE, steps: int, eps: float, rho: float) -> Tensor:
    """Karras et al. (2022) eq. 5: sigma_i = (s_max^(1/rho) + i/N (s_min^(1/rho) - s_max^(1/rho)))^rho."""
    s_max, s_min = edm_sigma(sde, torch.tensor([sde.T, eps], dtype=torch.float64)).tolist()
    ramp = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    sigmas = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    return _to_times(sde, sigmas, eps)


def _to_times(sde: SDE, sigmas: Tensor, eps: float) -> Tensor:
    ts = time_of_sigma(sde, sigmas, eps)
    ts[0], ts[-1] = sde.T, eps  # the ends exactly, not to bisection rounding
    return ts


Schedule = Callable[[SDE, int, float, float], Tensor]
SCHEDULES: dict[str, Schedule] = {"uniform": uniform, "log_sigma": log_sigma, "edm": edm}


def time_grid(
    sde: SDE, steps: int, eps: float, schedule: str = "uniform", rho: float = 7.0
) -> list[float]:
    """``steps + 1`` decreasing times from T to eps under ``schedule`` (a key of SCHEDULES)."""
    return lookup(SCHEDULES, schedule, "time schedule")(sde, steps, eps, rho).tolist()
