"""DDIM with eta (= Euler ancestral) and restart sampling, over a noise-level grid
(:mod:`lightning_score.sampling.grid`: x is EDM's x~, ``model`` the denoiser D(x~, sigma)).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_score.sampling.base import noise_like
from lightning_score.sampling.grid import GridModel
from lightning_score.sampling.ode import _steps


def ancestral_step(sigma: Tensor, sigma_next: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """(sigma_down, sigma_up) of one DDIM step with noise ``eta``: DDIM's sigma_t (Song et al.
    2021, eq. 16), divided by alpha_{t-1}, is eta sigma' sqrt(1 - sigma'^2 / sigma^2) in EDM's
    variables; the deterministic part moves to sigma_down = sqrt(sigma'^2 - sigma_up^2)."""
    up = torch.clamp(eta * sigma_next * (1 - sigma_next**2 / sigma**2).sqrt(), max=sigma_next)
    return (sigma_next**2 - up**2).sqrt(), up


def sample_ddim(
    model: GridModel,
    x: Tensor,
    sigmas: Tensor,
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12) with noise ``eta``, one NFE per step.

    x_{t-1} = sqrt(abar') D + sqrt(1 - abar' - s_t^2) eps + s_t z reads, in x~ = x / sqrt(abar'),
    x~' = D + sigma_down (x~ - D) / sigma + sigma_up z: an Euler step to sigma_down plus noise.
    That is k-diffusion's Euler ancestral, so ``euler_ancestral`` is this function at eta = 1
    and eta = 0 is the deterministic DDIM (= ``euler``).
    """
    for i in _steps(len(sigmas) - 1, "ddim", progress):
        denoised = model(x, sigmas[i])
        down, up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = denoised + down / sigmas[i] * (x - denoised)
        if up > 0:
            x = x + up * noise_like(x, generator)
        x = model.moved(x, sigmas[i + 1])
    return x


def heun_step(model: GridModel, x: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """EDM's Heun step (Karras et al. 2022, Alg. 1 l. 7-11); Euler into sigma = 0 (one NFE)."""
    d = (x - model(x, sigma)) / sigma
    x_next = x + (sigma_next - sigma) * d
    if sigma_next == 0:
        return x_next
    d_next = (x_next - model(x_next, sigma_next)) / sigma_next
    return x + (sigma_next - sigma) * (d + d_next) / 2


def restart_grid(sigma_max: float, sigma_min: Tensor, steps: int, rho: float = 7.0) -> Tensor:
    """The restart interval's own grid: EDM's eq. 5 from sigma_max down to sigma_min."""
    ramp = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    lo, hi = float(sigma_min) ** (1 / rho), sigma_max ** (1 / rho)
    grid = (hi + ramp * (lo - hi)) ** rho
    grid[-1] = float(sigma_min)  # land exactly on the main grid's sigma (its own time)
    return grid.to(sigma_min)


def sample_restart(
    model: GridModel,
    x: Tensor,
    sigmas: Tensor,
    *,
    sigma_min: float,
    sigma_max: float,
    steps: int,
    repeats: int,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """Restart sampling (Xu et al. 2023, Alg. 1) over Heun.

    Heun along ``sigmas``; at the first grid sigma s_j <= ``sigma_min`` the state is pushed back
    up to ``sigma_max`` by the forward kernel, x~ + sqrt(sigma_max^2 - s_j^2) z (exact for every
    linear SDE in these variables), and carried down to s_j again by ``steps`` Heun steps on
    EDM's grid, ``repeats`` times; then Heun continues. The added noise contracts the error
    accumulated before s_j; each restart costs 2 ``steps`` NFE.
    """
    restart_at = next(
        (j for j in range(1, len(sigmas)) if 0 < sigmas[j] <= sigma_min < sigma_max), None
    )
    for i in _steps(len(sigmas) - 1, "restart", progress):
        x = model.moved(heun_step(model, x, sigmas[i], sigmas[i + 1]), sigmas[i + 1])
        if i + 1 != restart_at or sigmas[i + 1] >= sigma_max:
            continue
        inner = restart_grid(sigma_max, sigmas[i + 1], steps)
        for _ in range(repeats):
            x = x + (inner[0] ** 2 - inner[-1] ** 2).sqrt() * noise_like(x, generator)
            x = model.moved(x, inner[0])
            for k in range(steps):
                x = model.moved(heun_step(model, x, inner[k], inner[k + 1]), inner[k + 1])
    return x
