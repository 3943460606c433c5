"""Predictors: one reverse-time step from t to t_next < t (Song et al. 2021, Sec. 4.2, App. E-F).

Each is a plain function ``(sde, score_fn, x, t, t_next, generator) -> (x, x_mean)``: ``x_mean``
is the step without its noise, what the final denoising step returns.
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
from lightning_score.sde import SDE, ScoreFn, batch_broadcast

Predictor = Callable[
    [SDE, ScoreFn, Tensor, float, float, torch.Generator | None], tuple[Tensor, Tensor]
]


def euler_maruyama(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    t: float,
    t_next: float,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """Euler-Maruyama on the reverse SDE dx = [f - g^2 s] dt + g dw_bar (eq. 6), dt = t_next - t < 0."""
    dt = t_next - t
    drift, diffusion = sde.reverse(score_fn).sde(x, batch_time(t, x))
    x_mean = x + drift * dt
    return x_mean + batch_broadcast(diffusion, x) * (-dt) ** 0.5 * noise_like(x, generator), x_mean


def reverse_diffusion(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    t: float,
    t_next: float,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """Reverse of the forward chain x_t = a x_s + G z: x_s = x_t - (a - 1) x_t + G^2 s + G z (eq. 46)."""
    a, g2, _, _ = chain_step(sde, t, t_next, x)
    score = score_fn(x, batch_time(t, x))
    x_mean = x - (a - 1) * x + g2 * score
    return x_mean + g2.sqrt() * noise_like(x, generator), x_mean


def ancestral_sampling(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    t: float,
    t_next: float,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """Sample q(x_s | x_t, x0_hat) with Tweedie's x0_hat = (x_t + std_t^2 s) / alpha_t.

    VE: x_s = x_t + (sigma_t^2 - sigma_s^2) s + sqrt(sigma_s^2 (sigma_t^2 - sigma_s^2) / sigma_t^2) z
    (eq. 47). VP: x_s = (x_t + beta s) / sqrt(1 - beta) + sqrt(beta) z, DDPM's sampler with variance
    beta (App. F), the paper's choice (``sde.ancestral_uses_forward_variance``). Sub-VP and EDM,
    absent from the paper, use the exact posterior variance G^2 std_s^2 / std_t^2, as VE does.
    """
    a, g2, std_t, std_s = chain_step(sde, t, t_next, x)
    alpha_t, _ = kernel(sde, t, x)
    alpha_s = alpha_t / a
    x0_hat = (x + std_t**2 * score_fn(x, batch_time(t, x))) / alpha_t
    x_mean = alpha_s * g2 / std_t**2 * x0_hat + a * std_s**2 / std_t**2 * x
    variance = g2 if sde.ancestral_uses_forward_variance else g2 * std_s**2 / std_t**2
    return x_mean + variance.sqrt() * noise_like(x, generator), x_mean


PREDICTORS: dict[str, Predictor | None] = {
    "euler_maruyama": euler_maruyama,
    "reverse_diffusion": reverse_diffusion,
    "ancestral_sampling": ancestral_sampling,
    "none": None,
}


def predictor_unsupported(name: str, sde: SDE) -> str | None:
    """Why predictor ``name`` cannot run on ``sde`` (None if it can)."""
    if name in ("reverse_diffusion", "ancestral_sampling"):
        return linear_sde_reason(sde, f"predictor '{name}'")
    return None
