"""Correctors: MCMC steps at a fixed time t towards p_t (Song et al. 2021, Alg. 4-5, App. G).

Each is ``(sde, score_fn, x, t, t_next, generator, snr, n_steps) -> (x, x_mean)``; ``t_next`` is the
next grid time, which fixes the signal ratio alpha of the current chain step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lightning_score.sampling.base import (
    batch_time,
    chain_step,
    kernel,
    linear_sde_reason,
    noise_like,
)
from lightning_score.sde import SDE, ScoreFn

Corrector = Callable[
    [SDE, ScoreFn, Tensor, float, float, torch.Generator | None, float, int], tuple[Tensor, Tensor]
]


def _step_alpha(sde: SDE, t: float, t_next: float, x: Tensor) -> Tensor:
    """alpha_i = a^2 of the chain step: 1 for VE, 1 - beta_i for VP (Alg. 5).

    The official code looks alpha up in VP's discrete table and crashes for sub-VP. Sub-VP has the
    same drift, hence the same signal ratio a^2 = exp(-int beta) per step, so it gets the same alpha.
    """
    a, _, _, _ = chain_step(sde, t, t_next, x)
    return a**2


def langevin(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    t: float,
    t_next: float,
    generator: torch.Generator | None,
    snr: float,
    n_steps: int,
) -> tuple[Tensor, Tensor]:
    """Langevin MCMC with step eps = 2 alpha (snr ||z|| / ||s||)^2 (Alg. 4-5).

    The norms are averaged over the batch, as in the official code: per sample, the ratio
    ||z||^2 / ||s||^2 is F-distributed and heavy-tailed in low dimensions (infinite variance
    for d <= 4), which gives some samples enormous steps.
    """
    alpha = _step_alpha(sde, t, t_next, x)
    tb = batch_time(t, x)
    x_mean = x
    for _ in range(n_steps):
        grad = score_fn(x, tb)
        z = noise_like(x, generator)
        ratio = z.flatten(1).norm(dim=1).mean() / grad.flatten(1).norm(dim=1).mean()
        step = 2 * alpha * (snr * ratio) ** 2
        x_mean = x + step * grad
        x = x_mean + (2 * step).sqrt() * z
    return x, x_mean


def ald(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    t: float,
    t_next: float,
    generator: torch.Generator | None,
    snr: float,
    n_steps: int,
) -> tuple[Tensor, Tensor]:
    """Annealed Langevin dynamics of NCSN (Song & Ermon 2019, Alg. 1): eps = 2 alpha (snr std_t)^2."""
    alpha = _step_alpha(sde, t, t_next, x)
    _, std = kernel(sde, t, x)
    step = 2 * alpha * (snr * std) ** 2
    tb = batch_time(t, x)
    x_mean = x
    for _ in range(n_steps):
        x_mean = x + step * score_fn(x, tb)
        x = x_mean + (2 * step).sqrt() * noise_like(x, generator)
    return x, x_mean


CORRECTORS: dict[str, Corrector | None] = {"langevin": langevin, "ald": ald, "none": None}


def corrector_unsupported(name: str, sde: SDE) -> str | None:
    """Why corrector ``name`` cannot run on ``sde`` (None if it can)."""
    if name == "none":
        return None
    return linear_sde_reason(sde, f"corrector '{name}'")
