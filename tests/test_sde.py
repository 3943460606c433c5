"""Closed-form checks of the VE, VP and sub-VP SDEs against the paper's formulas."""

import math

import pytest
import torch

from lightning_score.sde import EDMSDE, SDES, VESDE, VPSDE, SubVPSDE

TIMES = torch.tensor([1e-5, 0.1, 0.37, 0.5, 0.9, 1.0], dtype=torch.float64)
B0, B1 = 0.1, 20.0


def _x(n: int = 6, d: int = 3) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_ve_marginal_and_sde():
    sde, x = VESDE(0.01, 50.0), _x()
    mean, std = sde.marginal_prob(x, TIMES)
    expected = 0.01 * (50.0 / 0.01) ** TIMES
    torch.testing.assert_close(mean, x)
    torch.testing.assert_close(std, expected)
    drift, g = sde.sde(x, TIMES)
    torch.testing.assert_close(drift, torch.zeros_like(x))
    # d sigma^2/dt = 2 sigma^2 log(sigma_max/sigma_min) = g^2
    torch.testing.assert_close(g**2, 2 * expected**2 * math.log(5000.0))


def test_vp_marginal_and_sde():
    sde, x = VPSDE(B0, B1), _x()
    mean, std = sde.marginal_prob(x, TIMES)
    log_coeff = -0.25 * TIMES**2 * (B1 - B0) - 0.5 * TIMES * B0
    torch.testing.assert_close(mean, x * torch.exp(log_coeff)[:, None])
    torch.testing.assert_close(std, torch.sqrt(1 - torch.exp(2 * log_coeff)))
    drift, g = sde.sde(x, TIMES)
    beta = B0 + TIMES * (B1 - B0)
    torch.testing.assert_close(drift, -0.5 * beta[:, None] * x)
    torch.testing.assert_close(g, torch.sqrt(beta))


def test_subvp_marginal_and_sde():
    sde, x = SubVPSDE(B0, B1), _x()
    mean, std = sde.marginal_prob(x, TIMES)
    log_coeff = -0.25 * TIMES**2 * (B1 - B0) - 0.5 * TIMES * B0
    torch.testing.assert_close(mean, x * torch.exp(log_coeff)[:, None])
    torch.testing.assert_close(std, 1 - torch.exp(2 * log_coeff))
    _, g = sde.sde(x, TIMES)
    beta = B0 + TIMES * (B1 - B0)
    integral = B0 * TIMES + 0.5 * (B1 - B0) * TIMES**2
    torch.testing.assert_close(g**2, beta * (1 - torch.exp(-2 * integral)))


@pytest.mark.parametrize("name", sorted(SDES))
def test_prior_logp_is_gaussian(name):
    sde = SDES[name]()
    z = sde.prior_sampling((5, 4, 2), generator=torch.Generator().manual_seed(1)).double()
    s = sde.prior_std()
    expected = torch.distributions.Normal(0.0, s).log_prob(z).flatten(1).sum(1)
    torch.testing.assert_close(sde.prior_logp(z), expected)


@pytest.mark.parametrize("name", sorted(SDES))
def test_perturbed_samples_have_marginal_variance(name):
    """x_t = mean + std z has per-coordinate variance std^2 for fixed x_0 (200k draws)."""
    sde = SDES[name]()
    n = 200_000
    gen = torch.Generator().manual_seed(2)
    x0 = torch.full((n, 1), 0.3, dtype=torch.float64)
    for t in (0.05, 0.5, 1.0):
        tt = torch.full((n,), t, dtype=torch.float64)
        mean, std = sde.marginal_prob(x0, tt)
        xt = mean + std[:, None] * torch.randn(n, 1, generator=gen, dtype=torch.float64)
        # relative standard error of a variance estimate is sqrt(2/n) ~ 0.3%: allow 5 sigma.
        assert abs(xt.var().item() / std[0].item() ** 2 - 1) < 5 * math.sqrt(2 / n)
        assert abs(xt.mean().item() - mean[0, 0].item()) < 5 * std[0].item() / math.sqrt(n)


@pytest.mark.parametrize("name", sorted(SDES))
def test_marginal_matches_fokker_planck_moments(name):
    """d mean/dt = E[f] and d var/dt = 2 cov(x, f) + g^2 for these linear SDEs (finite differences)."""
    sde = SDES[name]()
    x0 = torch.ones(1, 1, dtype=torch.float64)
    for t in (0.2, 0.6):
        h = 1e-6
        tt = torch.tensor([t], dtype=torch.float64)
        m_p, s_p = sde.marginal_prob(x0, tt + h)
        m_m, s_m = sde.marginal_prob(x0, tt - h)
        m, s = sde.marginal_prob(x0, tt)
        drift, g = sde.sde(m, tt)
        torch.testing.assert_close((m_p - m_m) / (2 * h), drift, rtol=1e-5, atol=1e-8)
        # linear drift f = a(t) x: d var/dt = 2 a var + g^2; for VE a = 0.
        a = drift / m if drift.abs().item() > 0 else torch.zeros_like(m)
        dvar = (s_p**2 - s_m**2) / (2 * h)
        expected = 2 * a.squeeze() * s**2 + g**2
        torch.testing.assert_close(dvar, expected, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", sorted(SDES))
def test_likelihood_density_antiderivative(name):
    """d/dt of the closed-form antiderivative equals g^2/std^2, and the inverse inverts it."""
    sde = SDES[name]()
    t = torch.tensor([0.01, 0.2, 0.5, 0.95], dtype=torch.float64)
    h = 1e-6
    deriv = (
        sde.likelihood_density_antiderivative(t + h) - sde.likelihood_density_antiderivative(t - h)
    ) / (2 * h)
    torch.testing.assert_close(deriv, sde.diffusion_sq(t) / sde.std(t) ** 2, rtol=1e-5, atol=1e-6)
    back = sde.likelihood_density_inverse(sde.likelihood_density_antiderivative(t))
    torch.testing.assert_close(back, t)


@pytest.mark.parametrize("name", sorted(SDES))
def test_sigma_is_std_over_alpha_and_time_of_sigma_inverts_it(name):
    """EDM's noise level sigma(t) = std / alpha in closed form, and its closed-form inverse."""
    sde = SDES[name]()
    t = torch.linspace(sde.default_eps, sde.T, 7, dtype=torch.float64)
    mean, std = sde.marginal_prob(torch.ones(7, 1, dtype=torch.float64), t)
    torch.testing.assert_close(sde.sigma(t), std / mean[:, 0])
    torch.testing.assert_close(sde.alpha(t), mean[:, 0])
    torch.testing.assert_close(sde.time_of_sigma(sde.sigma(t)), t)


def test_edm_schedule_is_sigma_equals_t():
    """Karras et al. (2022): sigma(t) = t, s(t) = 1, so p_t = p_data * N(0, t^2) and g^2 = 2t."""
    sde = EDMSDE()
    assert (sde.sigma_min, sde.sigma_max, sde.T, sde.default_eps) == (0.002, 80.0, 80.0, 0.002)
    x = _x()
    t = torch.tensor([0.002, 0.1, 1.0, 5.0, 40.0, 80.0], dtype=torch.float64)
    mean, std = sde.marginal_prob(x, t)
    torch.testing.assert_close(mean, x)
    torch.testing.assert_close(std, t)
    _, g = sde.sde(x, t)
    torch.testing.assert_close(g**2, 2 * t)  # d sigma^2 / dt
    assert sde.centered and sde.prior_std() == 80.0
    edges = sde.time_bins(5, 0.002)
    ratio = torch.full((5,), (80 / 0.002) ** 0.2, dtype=torch.float64)
    torch.testing.assert_close(edges[1:] / edges[:-1], ratio)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="sigma_min"):
        VESDE(sigma_min=10.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="beta_min"):
        VPSDE(beta_min=5.0, beta_max=1.0)
    with pytest.raises(ValueError, match="sigma_min"):
        EDMSDE(sigma_min=100.0)


def test_scaling_follows_sde_convention():
    x = torch.rand(2, 1, 4, 4)
    assert VESDE().scale_data(x).min() >= 0
    torch.testing.assert_close(VPSDE().scale_data(x), 2 * x - 1)
    torch.testing.assert_close(SubVPSDE().unscale_data(SubVPSDE().scale_data(x)), x)
