"""Likelihood through the probability-flow ODE against closed forms for Gaussian data.

If x_0 ~ N(m, C), then x_t ~ N(a_t m, a_t^2 C + std_t^2 I) with a_t, std_t from
``sde.marginal_prob``: the exact score is -(a_t^2 C + std_t^2 I)^-1 (x - a_t m), and the ODE's
log-density at t = eps must equal the Gaussian log-density at eps.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor
from torch.distributions import MultivariateNormal

from lightning_score.evaluation.likelihood import (
    bits_per_dim,
    dequantize,
    evaluate_bits_per_dim,
    log_likelihood,
)
from lightning_score.sde import SDE, VESDE, VPSDE, SubVPSDE

EPS = 1e-5


class Gaussian:
    """Data N(m, Q diag(lam) Q^T) and its exact perturbed score under an SDE."""

    def __init__(self, sde: SDE, mean: Tensor, eigvals: Tensor, basis: Tensor) -> None:
        self.sde, self.m, self.lam, self.Q = sde, mean, eigvals, basis

    def _coeffs(self, t: Tensor) -> tuple[Tensor, Tensor]:
        ones = torch.ones(t.shape[0], 1, dtype=t.dtype)
        a, std = self.sde.marginal_prob(ones, t)
        return a, std[:, None]  # (B, 1) each

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        a, std = self._coeffs(t)
        y = (x - a * self.m) @ self.Q
        return (-y / (a**2 * self.lam + std**2)) @ self.Q.T

    def log_prob(self, x: Tensor, t: float) -> Tensor:
        a, std = self._coeffs(torch.full((1,), t, dtype=x.dtype))
        cov = self.Q @ torch.diag(a[0] ** 2 * self.lam + std[0] ** 2) @ self.Q.T
        return MultivariateNormal(a[0] * self.m, covariance_matrix=cov).log_prob(x)

    def sample(self, n: int, gen: torch.Generator) -> Tensor:
        z = torch.randn(n, self.m.numel(), generator=gen, dtype=self.m.dtype)
        return self.m + (z * self.lam.sqrt()) @ self.Q.T


def isotropic(sde: SDE, dim: int = 8, s: float = 0.5) -> Gaussian:
    m = torch.linspace(-0.5, 0.5, dim, dtype=torch.float64)
    return Gaussian(
        sde, m, torch.full((dim,), s**2, dtype=torch.float64), torch.eye(dim, dtype=torch.float64)
    )


def correlated(sde: SDE, dim: int = 6) -> Gaussian:
    gen = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    lam = torch.linspace(0.05, 0.8, dim, dtype=torch.float64) ** 2
    return Gaussian(sde, torch.linspace(-0.5, 0.5, dim, dtype=torch.float64), lam, q)


SDES = {
    "ve": lambda: VESDE(sigma_min=0.01, sigma_max=50.0),
    "vp": lambda: VPSDE(),
    "subvp": lambda: SubVPSDE(),
}


@pytest.mark.parametrize("name", list(SDES))
def test_exact_trace_matches_closed_form(name: str) -> None:
    sde = SDES[name]()
    g = isotropic(sde)
    x = g.sample(16, torch.Generator().manual_seed(0))
    out = log_likelihood(g.score, sde, x, trace="exact", eps=EPS)
    exact = g.log_prob(x, EPS)
    rel = ((out.logp - exact).abs() / exact.abs()).max()
    assert rel < 0.01, out.logp - exact
    # Most of that error is the prior: p_T is N(a_T m, a_T^2 C + std_T^2 I), not N(0, prior_std^2).
    # With the true p_T in place of the prior only the ODE's tolerance remains.
    with_true_prior = out.logp - out.prior_logp + g.log_prob(out.z, sde.T)
    assert (with_true_prior - exact).abs().max() < 1e-3
    assert 20 < out.nfe < 2000


@pytest.mark.parametrize("trace", ["rademacher", "gaussian"])
def test_hutchinson_within_stated_standard_error(trace: str) -> None:
    """Correlated Gaussian: the drift's Jacobian is not diagonal, so probes do add variance."""
    sde = VPSDE()
    g = correlated(sde)
    x = g.sample(24, torch.Generator().manual_seed(1))
    result = evaluate_bits_per_dim(
        g.score, sde, lambda: [(torch.arange(24), x)], repeats=6, images=False, trace=trace,
        seed=2, eps=EPS,
    )  # fmt: skip
    exact_bpd = -g.log_prob(x, EPS) / (x.shape[1] * math.log(2))
    se = result.estimator_stderr
    assert se > 1e-4  # the probes do contribute variance here
    assert abs(result.mean - float(exact_bpd.mean())) < 3 * se
    # per point, averaged over repeats, the estimates scatter around the truth by about sqrt(R) se
    per_point = result.values.mean(0) - exact_bpd
    assert per_point.abs().max() < 4 * se * math.sqrt(x.shape[0])
    # the standard error over data points also covers the spread of log p over the data
    assert result.stderr > se


def test_bits_per_dim_offset_and_dequantization() -> None:
    """Same 8-bit data, same distribution expressed in [0, 1] (VE) and [-1, 1] (VP): equal bpd.

    Both equal the closed form -log2 N(y) / D + 8 on the dequantized data y in [0, 1].
    """
    dim = 4
    base = isotropic(VESDE(), dim=dim, s=0.15)
    base.m = torch.full((dim,), 0.5, dtype=torch.float64)
    x01 = (base.sample(8, torch.Generator().manual_seed(5)).clamp(0, 1) * 255).round() / 255

    ve = VESDE(sigma_min=0.01, sigma_max=50.0)
    g_ve = Gaussian(ve, base.m, base.lam, base.Q)
    vp = VPSDE()
    g_vp = Gaussian(vp, 2 * base.m - 1, 4 * base.lam, base.Q)  # the same law pushed to [-1, 1]

    bpd_ve, _ = bits_per_dim(
        g_ve.score, ve, x01, "exact", torch.Generator().manual_seed(9), eps=EPS
    )
    bpd_vp, _ = bits_per_dim(
        g_vp.score, vp, x01, "exact", torch.Generator().manual_seed(9), eps=EPS
    )
    y = dequantize(x01, torch.Generator().manual_seed(9))
    # change of variables z = 2 y - 1: log p_y(y) = log p_z(z) + D log 2
    logp_y = g_vp.log_prob(2 * y - 1, EPS) + dim * math.log(2)
    torch.testing.assert_close(bpd_vp, -logp_y / (dim * math.log(2)) + 8, atol=1e-3, rtol=0)
    # VE's prior N(0, 50^2 I) ignores the data mean 0.5, an error of about 0.01 bpd here, and its
    # marginal at eps is smoothed by sigma_min; a wrong offset would be off by a whole bit.
    closed_ve = -g_ve.log_prob(y, EPS) / (dim * math.log(2)) + 8
    torch.testing.assert_close(bpd_ve, closed_ve, atol=0.03, rtol=0)
    torch.testing.assert_close(bpd_ve, bpd_vp, atol=0.03, rtol=0)
    assert (y >= 0).all() and (y < 1).all()


def test_standard_errors() -> None:
    from lightning_score.evaluation.likelihood import BitsPerDim

    values = torch.tensor([[1.0, 3.0, 5.0], [3.0, 5.0, 7.0]], dtype=torch.float64)
    r = BitsPerDim(values=values, indices=torch.arange(3), nfe_total=60, solves=6)
    assert r.mean == pytest.approx(4.0) and r.nfe == 10.0
    assert r.stderr == pytest.approx(float(torch.tensor([2.0, 4.0, 6.0]).std()) / math.sqrt(3))
    assert r.estimator_stderr == pytest.approx(math.sqrt(2.0 / 6))


def test_bad_arguments() -> None:
    sde = VPSDE()
    with pytest.raises(ValueError, match="choose one of"):
        log_likelihood(lambda x, t: -x, sde, torch.zeros(2, 3), trace="hutch")
    with pytest.raises(ValueError, match="use trace='rademacher'"):
        log_likelihood(lambda x, t: -x, sde, torch.zeros(1, 3, 16, 16), trace="exact")
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        evaluate_bits_per_dim(lambda x, t: -x, sde, lambda: [], repeats=0)


@pytest.mark.slow
def test_trained_toy_model_nll_is_close_to_the_data_entropy(tmp_path) -> None:
    """Train the 2-D toy config (the 8-Gaussian ring, whose density is known), then
    ``lscore likelihood`` on held-out points: its NLL must be close to the data entropy, and not
    below the true NLL of the same points by more than noise (no model beats the true density)."""
    from lightning_score.cli import main
    from lightning_score.data import build_datamodule
    from lightning_score.data.toy2d import gaussian_mixture, gaussian_mixture_log_prob
    from lightning_score.experiment import load_config
    from lightning_score.training.run import train

    root = Path(__file__).resolve().parents[1]
    overrides = [
        f"out_dir={tmp_path}",
        "trainer.max_steps=1500",
        "sample_grid.every_n_steps=100000",
    ]
    cfg = load_config(root / "configs" / "toy2d.yaml", overrides)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small MLP on shared cores: a second thread only spins
    try:
        run_dir = train(cfg)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "nll.json"
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    args = ["likelihood", ckpt, "--split", "test", "--num", "200", "--trace", "exact"]
    assert main([*args, "--repeats", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())

    dm = build_datamodule(cfg.data, cfg.seed)
    dm.setup()
    points = torch.stack([dm.val_set[i][0] for i in range(200)])
    true_nll = float(-gaussian_mixture_log_prob(points).mean())
    entropy = float(
        -gaussian_mixture_log_prob(
            gaussian_mixture(200_000, torch.Generator().manual_seed(0))
        ).mean()
    )
    nll, se = report["nll_nats"], report["bpd_stderr"] * 2 * math.log(2)
    assert abs(true_nll - entropy) < 3 * se  # the held-out points are typical
    assert nll > true_nll - 3 * se
    assert nll - entropy < 0.15, (nll, entropy)  # measured: 1.76 vs 1.70 nats
