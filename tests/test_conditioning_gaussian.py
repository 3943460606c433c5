"""Conditioning against closed forms: inpainting, noisy linear measurements and classifier
guidance with exact scores of Gaussian data N(m, S) (S not diagonal) and a Gaussian mixture.

How the tolerances are derived. Every method here is approximate, so each test compares with
two references:

* the exact law of the method as run. For Gaussian data every score (guided or not) is affine
  in x, the reverse-diffusion step is affine plus Gaussian noise, and a projection sets the
  known coordinates to an independent Gaussian draw; so the sampler's output is Gaussian and
  its mean and covariance follow by propagating them through the very same steps (``law``:
  the affine form of the score is read off the score function itself at each step). Samples
  must match this law within 4.5 standard errors: with n samples the mean of a coordinate has
  SE sd / sqrt(n), a variance SE var sqrt(2 / n), a covariance SE sd_i sd_j / sqrt(n) (at most).
* the true conditional / posterior. The distance of the law to it is the method's known
  approximation (replacement conditions the unknown part on a draw of the noisy known part,
  not on the clean one: Song et al. 2021, app. I.2; the measurement gradient approximates
  p_t(y | x_t) through the denoiser). Samples must lie within 4.5 SE of the truth plus that
  distance, and the distance itself must stay small where the method is said to be good
  (RePaint resampling; the posterior-variance term on isotropic data, where it is exact).
"""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
from torch import Tensor

from lightning_score.conditioning.guidance import classifier_guided, measurement_guided
from lightning_score.conditioning.inverse import Projection
from lightning_score.conditioning.operators import Mask, RandomProjection
from lightning_score.config import ConfigError, SamplingConfig
from lightning_score.sampling import make_generator, sample
from lightning_score.sampling.analytic import (
    gaussian_cov_score,
    gaussian_mixture_classifier,
    gaussian_mixture_score,
    gaussian_score,
)
from lightning_score.sampling.base import chain_step, kernel
from lightning_score.sampling.ode import few_step_grid
from lightning_score.sampling.schedules import resampling_grid, time_grid
from lightning_score.sde import SDE, VESDE, VPSDE

D = torch.float64
SDES = {"ve": lambda: VESDE(sigma_max=50.0), "vp": VPSDE}
_L = torch.tensor(
    [[1.0, 0.6, 0.3, 0.0], [0.2, 1.0, 0.5, 0.4], [0.0, 0.3, 1.0, 0.5], [0.4, 0.0, 0.2, 1.0]],
    dtype=D,
)
S = 0.3 * _L @ _L.T  # correlations up to 0.8: the known coordinates inform the unknown ones
M = torch.tensor([0.5, -0.5, 0.25, 0.0], dtype=D)
KNOWN = torch.tensor([True, True, False, False])
Y_KNOWN = torch.tensor([1.0, 0.2], dtype=D)
N = 4000


def gaussian_conditional(mean: Tensor, cov: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and covariance of the unknown coordinates given the known ones equal Y_KNOWN."""
    u, k = ~KNOWN, KNOWN
    gain = cov[u][:, k] @ torch.linalg.inv(cov[k][:, k])
    return mean[u] + gain @ (Y_KNOWN - mean[k]), cov[u][:, u] - gain @ cov[k][:, u]


def _affine(score_fn, t: float, d: int) -> tuple[Tensor, Tensor]:
    """K, b with score(x, t) = K x + b, read off the score at 0 and the unit vectors."""
    basis = torch.cat([torch.zeros(1, d, dtype=D), torch.eye(d, dtype=D)])
    out = score_fn(basis, torch.full((d + 1,), t, dtype=D))
    return (out[1:] - out[0]).T, out[0]


def law(score_fn, sde: SDE, cfg: SamplingConfig, project: bool) -> tuple[Tensor, Tensor]:
    """Exact mean and covariance of what ``sample`` returns for the reverse-diffusion predictor
    (with replacement of the KNOWN coordinates by their marginal at every move if ``project``,
    and RePaint's forward moves when the grid goes up)."""
    d = M.numel()
    eye = torch.eye(d, dtype=D)
    ts = time_grid(sde, cfg.steps, sde.default_eps, auto=sde.pc_schedule)
    ts = resampling_grid(ts, cfg.resample_jump, cfg.resample_repeats)

    def replace(mu: Tensor, cov: Tensor, alpha: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
        if not project:
            return mu, cov
        mu, cov = mu.clone(), cov.clone()
        mu[KNOWN] = alpha * Y_KNOWN
        cov[KNOWN] = 0
        cov[:, KNOWN] = 0
        idx = KNOWN.nonzero().flatten()
        cov[idx, idx] = std**2
        return mu, cov

    mu, cov = replace(torch.zeros(d, dtype=D), eye * sde.prior_std() ** 2, *kernel(sde, ts[0], M))
    mean_step = (mu, cov)
    for t, t_next in pairwise(ts):
        if t_next > t:
            a, g2, _, _ = chain_step(sde, t_next, t, M)
            mu, cov = a * mu, a**2 * cov + g2 * eye
        else:
            a, g2, _, _ = chain_step(sde, t, t_next, M)
            k, b = _affine(score_fn, t, d)
            step = (2 - a) * eye + g2 * k  # x' = x - (a - 1) x + G^2 (K x + b) + G z
            mean_step = (step @ mu + g2 * b, step @ cov @ step.T)
            mu, cov = mean_step[0], mean_step[1] + g2 * eye
        mu, cov = replace(mu, cov, *kernel(sde, t_next, M))
    return replace(*mean_step, torch.tensor(1.0, dtype=D), torch.tensor(0.0, dtype=D))


def assert_matches(
    x: Tensor, mean: Tensor, cov: Tensor, mean_bias: Tensor | float = 0.0, var_bias=0.0
) -> None:
    """Sample mean / covariance of x within 4.5 SE of (mean, cov), plus allowed biases (in units
    of the standard deviation for the mean, relative for the variance)."""
    n = x.shape[0]
    sd = cov.diagonal().sqrt()
    mean_err = ((x.mean(0) - mean) / sd).abs()
    assert (mean_err <= 4.5 / math.sqrt(n) + mean_bias).all(), f"mean off by {mean_err} sd"
    sample_cov = torch.cov(x.T)
    var_err = (sample_cov.diagonal() / cov.diagonal() - 1).abs()
    assert (var_err <= 4.5 * math.sqrt(2 / n) + var_bias).all(), f"variance off by {var_err}"
    corr_err = ((sample_cov - cov) / (sd[:, None] * sd[None, :])).abs()
    assert corr_err.max() <= 4.5 / math.sqrt(n) + float(torch.as_tensor(var_bias).max()), (
        f"covariance off by {corr_err}"
    )


def _inpaint(sde: SDE, cfg: SamplingConfig, seed: int = 0) -> Tensor:
    y = torch.cat([Y_KNOWN, torch.zeros(2, dtype=D)]).expand(N, -1)
    hook = Projection(sde, Mask(KNOWN.to(D)), y)
    out = sample(
        gaussian_cov_score(sde, M, S),
        sde,
        (N, M.numel()),
        cfg,
        generator=make_generator(seed),
        hook=hook,
    )
    x = out.samples.double()
    assert torch.equal(x[:, KNOWN], Y_KNOWN.float().double().expand(N, -1)), "known part not y"
    return x[:, ~KNOWN]


@pytest.mark.parametrize("sde_name", SDES)
def test_inpainting_samples_follow_the_exact_law_of_replacement(sde_name: str) -> None:
    """Replacement with RePaint resampling (jump 2, 3 walks) as run: samples vs its exact law."""
    sde = SDES[sde_name]()
    cfg = SamplingConfig(
        predictor="reverse_diffusion", steps=60, resample_jump=2, resample_repeats=3
    )
    mu, cov = law(gaussian_cov_score(sde, M, S), sde, cfg, project=True)
    assert_matches(_inpaint(sde, cfg), mu[~KNOWN], cov[~KNOWN][:, ~KNOWN])


@pytest.mark.parametrize("sde_name", SDES)
def test_inpainting_matches_the_gaussian_conditional(sde_name: str) -> None:
    """RePaint-resampled replacement samples the conditional within SE plus its known bias.

    The law's distance to the conditional is the method's approximation: plain replacement is
    off by 0.45 sd in the mean and 33-45% in the variance on this S (measured, any N), and 40
    resampling walks per step bring that under 0.05 sd and 3%.
    """
    sde = SDES[sde_name]()
    score = gaussian_cov_score(sde, M, S)
    mu_c, cov_c = gaussian_conditional(M, S)
    sd_c = cov_c.diagonal().sqrt()
    plain = SamplingConfig(predictor="reverse_diffusion", steps=50)
    mu, _ = law(score, sde, plain, project=True)
    assert ((mu[~KNOWN] - mu_c) / sd_c).abs().max() > 0.3  # the approximation is real

    cfg = SamplingConfig(
        predictor="reverse_diffusion", steps=50, resample_jump=1, resample_repeats=40
    )
    mu, cov = law(score, sde, cfg, project=True)
    mean_bias = ((mu[~KNOWN] - mu_c) / sd_c).abs()
    var_bias = (cov[~KNOWN][:, ~KNOWN].diagonal() / cov_c.diagonal() - 1).abs()
    assert mean_bias.max() < 0.05 and var_bias.max() < 0.03, (mean_bias, var_bias)
    assert_matches(_inpaint(sde, cfg, seed=1), mu_c, cov_c, mean_bias, var_bias)


# -- noisy linear measurements ----------------------------------------------------------------
NOISE = 0.3
OPERATOR = RandomProjection((4,), 2, seed=3)
Y_NOISY = OPERATOR.rows.double() @ torch.tensor([1.0, 0.0, -0.5, 0.5], dtype=D) + torch.tensor(
    [0.1, -0.2], dtype=D
)


def gaussian_posterior(mean: Tensor, cov: Tensor) -> tuple[Tensor, Tensor]:
    """x | y for y = A x + N(0, NOISE^2 I), x ~ N(mean, cov)."""
    a = OPERATOR.rows.double()
    precision = torch.linalg.inv(cov) + a.T @ a / NOISE**2
    post_cov = torch.linalg.inv(precision)
    return post_cov @ (torch.linalg.solve(cov, mean) + a.T @ Y_NOISY / NOISE**2), post_cov


def _guided(sde: SDE, base, data_std: float | None, batch: int, network_sigma: float | None = None):
    y = Y_NOISY.expand(batch, -1)
    return measurement_guided(
        base, sde, OPERATOR, y, NOISE, data_std=data_std, network_sigma=network_sigma
    )


@pytest.mark.parametrize("sde_name", SDES)
@pytest.mark.parametrize(
    ("cfg", "var_bias", "network_sigma"),
    [
        # the allowances of test_samplers_gaussian: 10 / N for PC (measured here 3-4.5%), 2%
        # path error for the ODE solvers, plus 1.5% for the stiffer guided score
        (SamplingConfig(predictor="reverse_diffusion", steps=200), 0.05, None),
        (SamplingConfig(predictor="reverse_diffusion", steps=200), 0.05, 1.0),
        (SamplingConfig(sampler="ode"), 0.035, None),
        (SamplingConfig(sampler="heun", steps=40), 0.035, 0.0),
    ],
    ids=["pc", "pc_switch", "ode", "heun_gaussian_jacobian"],
)
def test_measurement_guidance_is_exact_for_isotropic_gaussian_data(
    sde_name: str, cfg: SamplingConfig, var_bias: float, network_sigma: float | None
) -> None:
    """With the posterior-variance term r_t^2 of data std s, p_t(y | x_t) is exact for
    N(m, s^2 I), and so is the Gaussian Jacobian used above ``network_sigma``: every sampler
    then draws the posterior (the adaptive ODE included)."""
    sde, s = SDES[sde_name](), 0.7
    guided = _guided(sde, gaussian_score(sde, M, s), s, N, network_sigma)
    x = sample(guided, sde, (N, 4), cfg, generator=make_generator(2)).samples.double()
    mean, cov = gaussian_posterior(M, s**2 * torch.eye(4, dtype=D))
    assert_matches(x, mean, cov, mean_bias=3 / 200 + 0.011, var_bias=var_bias)


@pytest.mark.parametrize("sde_name", SDES)
def test_measurement_guidance_matches_the_noisy_posterior(sde_name: str) -> None:
    """Correlated prior S: the scalar posterior-variance term is then an approximation; samples
    follow the method's exact law and lie within SE plus its bias of the true posterior, which
    stays under 0.12 sd (DPS without the term: measured 0.2-0.3 sd, checked to be worse)."""
    sde = SDES[sde_name]()
    base = gaussian_cov_score(sde, M, S)
    data_std = S.diagonal().mean().sqrt().item()
    cfg = SamplingConfig(predictor="reverse_diffusion", steps=200)
    mu_p, cov_p = gaussian_posterior(M, S)
    sd_p = cov_p.diagonal().sqrt()
    mu, cov = law(_guided(sde, base, data_std, M.numel() + 1), sde, cfg, project=False)
    mean_bias = ((mu - mu_p) / sd_p).abs()
    var_bias = (cov.diagonal() / cov_p.diagonal() - 1).abs()
    assert mean_bias.max() < 0.12 and var_bias.max() < 0.06, (mean_bias, var_bias)
    dps_mu, _ = law(_guided(sde, base, None, M.numel() + 1), sde, cfg, project=False)
    assert ((dps_mu - mu_p) / sd_p).abs().max() > mean_bias.max()

    guided = _guided(sde, base, data_std, N)
    x = sample(guided, sde, (N, 4), cfg, generator=make_generator(3)).samples.double()
    assert_matches(x, mu, cov)
    assert_matches(x, mu_p, cov_p, mean_bias, var_bias + 4.5 * math.sqrt(2 / N))


# -- classifier guidance ---------------------------------------------------------------------
WEIGHTS = (0.5, 0.3, 0.2)
MIX_MEANS = torch.tensor([[1.5, 0.0], [-1.0, 1.2], [-0.8, -1.4]])
MIX_STDS = (0.35, 0.3, 0.4)


@pytest.mark.parametrize("sde_name", SDES)
@pytest.mark.parametrize(
    "cfg",
    [
        SamplingConfig(predictor="reverse_diffusion", steps=200),
        SamplingConfig(predictor="euler_maruyama", corrector="langevin", steps=200),
        SamplingConfig(sampler="ode", rtol=1e-4, atol=1e-4),
        SamplingConfig(sampler="dpmpp_2m", steps=30),
    ],
    ids=["pc_rd", "pc_em_langevin", "ode", "dpmpp_2m"],
)
def test_classifier_guidance_samples_the_requested_component(
    sde_name: str, cfg: SamplingConfig
) -> None:
    """With the exact noisy classifier p_t(k | x_t) at scale 1, the guided score is component
    k's own score: >= 99% of samples land in the requested component (the Bayes classifier
    puts 99.9% of true component samples there; without guidance a component gets its weight)."""
    sde = SDES[sde_name]()
    args = (sde, WEIGHTS, MIX_MEANS, MIX_STDS)
    labels = torch.arange(3).repeat_interleave(400)
    guided = classifier_guided(
        gaussian_mixture_score(*args), gaussian_mixture_classifier(*args), labels, 3
    )
    x = sample(guided, sde, (labels.numel(), 2), cfg, generator=make_generator(4)).samples
    clean = gaussian_mixture_classifier(VPSDE(), WEIGHTS, MIX_MEANS, MIX_STDS)
    assigned = clean(x, torch.zeros(x.shape[0])).argmax(1)  # t = 0: the data's own components
    for k in range(3):
        share = (assigned[labels == k] == k).float().mean().item()
        assert share >= 0.99, f"component {k}: {share:.3f} of its samples"


# -- the hook mechanism ------------------------------------------------------------------------
class SpyHook:
    """Records the times it is called at and shifts nothing."""

    def __init__(self) -> None:
        self.times: list[float | None] = []

    def __call__(self, x: Tensor, t: float | None, generator) -> Tensor:
        self.times.append(t)
        return x


def _hook_times(cfg: SamplingConfig, sde: SDE) -> list[float | None]:
    """When the hook must run: after the prior draw, after each move (a corrector at t, a
    predictor or solver step at the next time, a resampling move at the time it goes up to),
    and on the result."""
    if cfg.sampler != "pc":
        return [*few_step_grid(sde, cfg, sde.default_eps), None]
    ts = time_grid(sde, cfg.steps, sde.default_eps, auto=sde.pc_schedule)
    ts = resampling_grid(ts, cfg.resample_jump, cfg.resample_repeats)
    times: list[float | None] = [ts[0]]
    for t, t_next in pairwise(ts):
        if cfg.corrector != "none" and t_next < t:
            times.append(t)
        times.append(t_next)
    return [*times, None]


@pytest.mark.parametrize(
    "cfg",
    [
        SamplingConfig(predictor="euler_maruyama", steps=6),
        SamplingConfig(predictor="ancestral_sampling", corrector="ald", steps=6),
        SamplingConfig(predictor="none", corrector="langevin", steps=6),
        SamplingConfig(predictor="reverse_diffusion", steps=6, resample_jump=2, resample_repeats=3),
        SamplingConfig(sampler="euler", steps=6),
        SamplingConfig(sampler="heun", steps=6),
        SamplingConfig(sampler="dpmpp_2m", steps=6),
        SamplingConfig(sampler="edm", steps=6, s_churn=10),
    ],
    ids=["em", "ancestral_ald", "langevin_only", "repaint", "euler", "heun", "dpmpp_2m", "edm"],
)
def test_every_fixed_grid_sampler_calls_the_hook_after_each_move(cfg: SamplingConfig) -> None:
    sde = VPSDE()
    spy = SpyHook()
    score = gaussian_score(sde, M.float(), 0.7)
    sample(score, sde, (8, 4), cfg, generator=make_generator(0), hook=spy)
    expected = _hook_times(cfg, sde)
    assert len(spy.times) == len(expected), spy.times
    assert spy.times[-1] is None
    assert spy.times[:-1] == pytest.approx(expected[:-1])


def test_projection_renoises_the_known_part_to_the_marginal_of_its_time() -> None:
    """The hook's known entries at time t are alpha(t) y + std(t) z (the marginal given y), the
    unknown ones are left alone, and the result gets y itself."""
    sde, t, n = VPSDE(), 0.4, 20_000
    y = torch.cat([Y_KNOWN, torch.zeros(2, dtype=D)]).expand(n, -1)
    hook = Projection(sde, Mask(KNOWN.to(D)), y)
    x = torch.randn(n, 4, generator=make_generator(5), dtype=D)
    out = hook(x, t, make_generator(6))
    alpha, std = kernel(sde, t, x)
    known = out[:, KNOWN]
    assert torch.equal(out[:, ~KNOWN], x[:, ~KNOWN])
    assert ((known.mean(0) - alpha * Y_KNOWN).abs() <= 4.5 * std / math.sqrt(n)).all()
    assert ((known.std(0) / std - 1).abs() <= 4.5 * math.sqrt(0.5 / n)).all()
    assert torch.equal(hook(x, None, None)[:, KNOWN], y[:, KNOWN])


def test_the_adaptive_ode_refuses_a_hook_with_the_reason() -> None:
    sde = VPSDE()
    with pytest.raises(ConfigError, match=r"adaptive solver.*fixed-grid sampler"):
        sample(
            gaussian_score(sde, M.float(), 0.7),
            sde,
            (8, 4),
            SamplingConfig(sampler="ode"),
            hook=SpyHook(),
        )


def test_resampling_is_refused_outside_pc() -> None:
    sde = VPSDE()
    cfg = SamplingConfig(sampler="heun", steps=5, resample_jump=1, resample_repeats=2)
    with pytest.raises(ConfigError, match=r"sampling\.sampler=pc"):
        sample(gaussian_score(sde, M.float(), 0.7), sde, (8, 4), cfg)


def test_resampling_grid_walks_each_segment_repeats_times() -> None:
    ts = [1.0, 0.8, 0.6, 0.4, 0.2]
    assert resampling_grid(ts, 2, 2) == [1.0, 0.8, 0.6, 1.0, 0.8, 0.6, 0.4, 0.2, 0.6, 0.4, 0.2]
    assert resampling_grid(ts, 0, 5) == ts and resampling_grid(ts, 3, 1) == ts
