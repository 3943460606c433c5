"""Weighted continuous denoising score matching (Song et al. 2021, eq. 7).

    L(theta) = E_t E_x0 E_z [ lambda(t) || s_theta(x_t, t) + z / std(t) ||^2 ],  x_t = mean + std z

with t ~ U(eps, T) or, for the likelihood weighting lambda = g^2, importance-sampled from
p(t) proportional to g(t)^2 / std(t)^2 (Song, Durkan, Murray & Ermon 2021, "Maximum Likelihood
Training of Score-Based Diffusion Models", sec. 5). Importance weights are chosen so that every
time sampler estimates the same objective: the expectation under t ~ U(eps, T).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_score.sde import SDE, ScoreFn, batch_broadcast


@dataclass
class TimeSample:
    """Times and the factor that turns lambda(t) into an unbiased estimate under U(eps, T)."""

    t: Tensor
    importance: Tensor  # (1 / (T - eps)) / q(t) for the sampling density q


def uniform_times(
    sde: SDE, batch: int, eps: float, device: torch.device, generator=None
) -> TimeSample:
    t = torch.rand(batch, device=device, generator=generator) * (sde.T - eps) + eps
    return TimeSample(t, torch.ones_like(t))


def importance_times(
    sde: SDE, batch: int, eps: float, device: torch.device, generator=None
) -> TimeSample:
    """Inverse-CDF sampling of q(t) = (g^2 / std^2) / Z on [eps, T], with the SDE's closed form."""
    lo = sde.likelihood_density_antiderivative(torch.tensor(eps, dtype=torch.float64))
    hi = sde.likelihood_density_antiderivative(torch.tensor(sde.T, dtype=torch.float64))
    u = torch.rand(batch, device=device, generator=generator, dtype=torch.float64)
    t = sde.likelihood_density_inverse(lo.to(device) + u * (hi - lo).to(device))
    t = t.clamp(eps, sde.T)
    t32 = t.float()
    density = sde.diffusion_sq(t) / sde.std(t) ** 2 / (hi - lo).to(device)
    importance = (1.0 / ((sde.T - eps) * density)).float()
    return TimeSample(t32, importance)


TIME_SAMPLERS: dict[str, Callable[..., TimeSample]] = {
    "uniform": uniform_times,
    "importance": importance_times,
}


def _weight_sigma2(sde: SDE, t: Tensor) -> Tensor:
    # lambda = std^2: the loss becomes || s std + z ||^2, well scaled at every t.
    return sde.std(t) ** 2


def _weight_likelihood(sde: SDE, t: Tensor) -> Tensor:
    # lambda = g^2 makes the objective an upper bound on the negative log-likelihood.
    return sde.diffusion_sq(t)


def _weight_none(sde: SDE, t: Tensor) -> Tensor:
    return torch.ones_like(t)


WEIGHTINGS: dict[str, Callable[[SDE, Tensor], Tensor]] = {
    "sigma2": _weight_sigma2,
    "likelihood": _weight_likelihood,
    "none": _weight_none,
}


def dsm_loss(
    score_fn: ScoreFn,
    sde: SDE,
    x0: Tensor,
    times: TimeSample,
    weighting: str = "sigma2",
    reduce: str = "mean",
    noise: Tensor | None = None,
) -> Tensor:
    """Per-sample weighted DSM loss, shape (B,); the caller averages (or bins by t)."""
    t = times.t
    z = torch.randn_like(x0) if noise is None else noise
    mean, std = sde.marginal_prob(x0, t)
    std_b = batch_broadcast(std, x0)
    x_t = mean + std_b * z
    score = score_fn(x_t, t)
    # || s + z/std ||^2 lambda  ==  || s std + z ||^2 lambda / std^2, the stable form.
    residual = (score * std_b + z).flatten(1).float()
    per_dim = residual.pow(2)
    sq = per_dim.mean(dim=1) if reduce == "mean" else per_dim.sum(dim=1)
    weight = WEIGHTINGS[weighting](sde, t) / std**2
    return sq * weight.float() * times.importance
