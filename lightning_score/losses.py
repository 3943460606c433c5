"""Weighted continuous denoising score matching (Song et al. 2021, eq. 7), in the variables of the
model's parameterization:

    lambda(t) || s_theta(x_t, t) + z / std(t) ||^2 = lambda(t) (alpha c_out / std^2)^2 || F - F* ||^2

with x_t = alpha x_0 + std z, F the raw network output and F* its regression target (see
``lightning_score.parameterization``). Song's rows make this the official arithmetic (F* = z for
VP, -z for VE, unit scale under the sigma^2 weighting); EDM's row gives EDM's loss (eq. 8).

Times: t ~ U(eps, T); or, for the likelihood weighting lambda = g^2, importance-sampled from
p(t) proportional to g(t)^2 / std(t)^2 (Song, Durkan, Murray & Ermon 2021, sec. 5), with weights
that keep the expectation under U(eps, T); or EDM's log-normal noise levels ln sigma ~ N(P_mean,
P_std^2) (Karras et al. 2022, Table 1), which define their own training distribution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_score.config import LossConfig, require, require_choice
from lightning_score.nets.score import ScoreModel
from lightning_score.parameterization import Parameterization
from lightning_score.sde import SDE, batch_broadcast


@dataclass
class TimeSample:
    """Times and the factor that turns lambda(t) into an estimate of the configured objective."""

    t: Tensor
    importance: Tensor  # (1 / (T - eps)) / q(t) for the importance sampler; 1 otherwise


def uniform_times(
    sde: SDE, batch: int, cfg: LossConfig, device: torch.device, generator=None
) -> TimeSample:
    t = torch.rand(batch, device=device, generator=generator) * (sde.T - cfg.eps) + cfg.eps
    return TimeSample(t, torch.ones_like(t))


def importance_times(
    sde: SDE, batch: int, cfg: LossConfig, device: torch.device, generator=None
) -> TimeSample:
    """Inverse-CDF sampling of q(t) = (g^2 / std^2) / Z on [eps, T], with the SDE's closed form."""
    eps = cfg.eps
    # The normalizer on the host as Python floats: no host-to-device copy in the training step.
    ends = torch.tensor([eps, sde.T], dtype=torch.float64)
    lo, hi = sde.likelihood_density_antiderivative(ends).tolist()
    u = torch.rand(batch, device=device, generator=generator, dtype=torch.float64)
    t = sde.likelihood_density_inverse(lo + u * (hi - lo))
    t = t.clamp(eps, sde.T)
    density = sde.diffusion_sq(t) / sde.std(t) ** 2 / (hi - lo)
    importance = (1.0 / ((sde.T - eps) * density)).float()
    return TimeSample(t.float(), importance)


def lognormal_times(
    sde: SDE, batch: int, cfg: LossConfig, device: torch.device, generator=None
) -> TimeSample:
    """EDM's training noise levels: ln sigma ~ N(p_mean, p_std^2), mapped to t through the SDE
    (t = sigma on EDM's schedule) and kept inside [sigma(eps), sigma(T)]."""
    n = torch.randn(batch, device=device, generator=generator, dtype=torch.float64)
    ends = sde.sigma(torch.tensor([cfg.eps, sde.T], dtype=torch.float64))
    sigma = torch.exp(cfg.p_mean + cfg.p_std * n).clamp(float(ends[0]), float(ends[1]))
    t = sde.time_of_sigma(sigma).clamp(cfg.eps, sde.T).float()
    return TimeSample(t, torch.ones_like(t))


TIME_SAMPLERS: dict[str, Callable[..., TimeSample]] = {
    "uniform": uniform_times,
    "importance": importance_times,
    "lognormal": lognormal_times,
}


# Weightings lambda(t) of the score error || s + z / std ||^2, as functions of the row and t.
def _weight_sigma2(param: Parameterization, t: Tensor) -> Tensor:
    # lambda = std^2: the loss becomes || s std + z ||^2, well scaled at every t.
    return param.sde.std(t) ** 2


def _weight_likelihood(param: Parameterization, t: Tensor) -> Tensor:
    # lambda = g^2 makes the objective an upper bound on the negative log-likelihood.
    return param.sde.diffusion_sq(t)


def _weight_none(param: Parameterization, t: Tensor) -> Tensor:
    return torch.ones_like(t)


def _weight_edm(param: Parameterization, t: Tensor) -> Tensor:
    # EDM's lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 on || D - x_0 ||^2 (Table 1), which
    # is || s + z / std ||^2 times std^4 / alpha^2.
    sde, sd = param.sde, param.sigma_data
    sigma = sde.sigma(t)
    edm_lambda = (sigma**2 + sd**2) / (sigma * sd) ** 2
    return edm_lambda * sde.std(t) ** 4 / sde.alpha(t) ** 2


WEIGHTINGS: dict[str, Callable[[Parameterization, Tensor], Tensor]] = {
    "sigma2": _weight_sigma2,
    "likelihood": _weight_likelihood,
    "none": _weight_none,
    "edm": _weight_edm,
}

#: how the squared error is reduced over data dimensions: the official ``reduce_mean=True`` is
#: ``mean``; its ``reduce_mean=False`` is ``half_sum`` (0.5 x the sum), not the plain ``sum``.
REDUCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "mean": lambda sq: sq.mean(dim=1),
    "sum": lambda sq: sq.sum(dim=1),
    "half_sum": lambda sq: 0.5 * sq.sum(dim=1),
}


def dsm_loss(
    model: ScoreModel,
    x0: Tensor,
    times: TimeSample,
    weighting: str = "sigma2",
    reduce: str = "mean",
    noise: Tensor | None = None,
    labels: Tensor | None = None,
) -> Tensor:
    """Per-sample weighted DSM loss, shape (B,); the caller averages (or bins by t).
    ``labels``: the class labels of a class-conditional model (its "no class" label included)."""
    param, t = model.param, times.t
    z = torch.randn_like(x0) if noise is None else noise
    mean, std = param.sde.marginal_prob(x0, t)
    x_t = mean + batch_broadcast(std, x0) * z
    error = (model.network(x_t, t, labels) - param.target(x0, z, t)).flatten(1)
    error = error.to(torch.promote_types(error.dtype, torch.float32))  # bf16 outputs: sum in fp32
    weight = WEIGHTINGS[weighting](param, t) * param.score_scale(t) ** 2
    return REDUCTIONS[reduce](error.pow(2)) * weight.to(error.dtype) * times.importance


def validate_loss_config(cfg: LossConfig, param: Parameterization) -> None:
    """Check the ``loss`` section against the parameterization (and SDE) it trains, filling in
    what it leaves to them (``auto``, ``eps=None``), so the saved config says what runs."""
    sde = param.sde
    if cfg.weighting == "auto":
        cfg.weighting = param.default_weighting
    if cfg.time_sampler == "auto":
        cfg.time_sampler = param.default_time_sampler
    if cfg.eps is None:
        cfg.eps = sde.train_eps
    require_choice(cfg.weighting, WEIGHTINGS, "loss.weighting")
    require_choice(cfg.time_sampler, TIME_SAMPLERS, "loss.time_sampler")
    require_choice(cfg.reduce, REDUCTIONS, "loss.reduce")
    require(0 < cfg.eps < sde.T, f"loss.eps must lie in (0, {sde.T:g}), got {cfg.eps}")
    require(
        cfg.time_sampler != "importance" or cfg.weighting == "likelihood",
        "loss.time_sampler=importance is the variance reduction for loss.weighting=likelihood; "
        "set loss.weighting=likelihood or loss.time_sampler=uniform",
    )
    require(cfg.p_std > 0, f"loss.p_std must be > 0, got {cfg.p_std}")
    require(cfg.t_bins > 0, f"loss.t_bins must be positive, got {cfg.t_bins}")
