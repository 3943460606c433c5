"""The weighted DSM loss against the exact score of Gaussian data, and the importance sampler."""

import math

import pytest
import torch

from lightning_score.config import LossConfig
from lightning_score.losses import dsm_loss, importance_times, uniform_times
from lightning_score.nets import ScoreModel
from lightning_score.sde import SDE, SDES, batch_broadcast

M, S = 0.5, 0.3  # data ~ N(M, S^2 I)


def gaussian_score(sde: SDE):
    """Exact score of p_t when x_0 ~ N(M, S^2 I): p_t = N(c M, c^2 S^2 + std^2)."""

    def score(x, t):
        ones = torch.ones_like(x)
        mean, std = sde.marginal_prob(ones, t)  # mean = c(t) * 1
        var = mean**2 * S**2 + batch_broadcast(std, x) ** 2
        return -(x - mean * M) / var

    return score


def _data(n: int, d: int, seed: int) -> torch.Tensor:
    return M + S * torch.randn(
        n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


@pytest.mark.parametrize("name", sorted(SDES))
@pytest.mark.parametrize("weighting", ["sigma2", "likelihood", "none"])
def test_exact_score_beats_perturbed_scores(name, weighting):
    sde = SDES[name]()
    # The unweighted loss carries O(1/std^2) noise that hides small excess losses: more draws.
    n, d = (200_000 if weighting == "none" else 20_000), 4
    x0 = _data(n, d, 0)
    gen = torch.Generator().manual_seed(1)
    # t >= 0.1: near t = 0 the 1/std^2 terms of the unweighted loss make sample means too
    # noisy to rank scores whose expected losses differ by well under a percent.
    times = uniform_times(sde, n, LossConfig(eps=0.1), torch.device("cpu"), generator=gen)
    times.t = times.t.double()
    noise = torch.randn(n, d, generator=gen, dtype=torch.float64)
    exact = gaussian_score(sde)
    # Common random numbers: the same (t, z) for every candidate score.
    base = dsm_loss(ScoreModel.from_score_fn(exact, sde), x0, times, weighting, noise=noise).mean()
    for perturbed in (
        lambda x, t: exact(x, t) * 1.1,
        lambda x, t: exact(x, t) * 0.9,
        lambda x, t: exact(x, t) + 0.05 / batch_broadcast(sde.std(t), x),
    ):
        model = ScoreModel.from_score_fn(perturbed, sde)
        assert dsm_loss(model, x0, times, weighting, noise=noise).mean() > base


def test_sigma2_weighting_equals_textbook_form():
    """|| s std + z ||^2 equals std^2 || s + z / std ||^2 (sum over dims for reduce=sum)."""
    sde = SDES["vpsde"]()
    x0 = _data(64, 3, 2)
    gen = torch.Generator().manual_seed(3)
    times = uniform_times(sde, 64, LossConfig(eps=1e-3), torch.device("cpu"), generator=gen)
    times.t = times.t.double()
    z = torch.randn(64, 3, generator=gen, dtype=torch.float64)
    score = gaussian_score(sde)
    got = dsm_loss(ScoreModel.from_score_fn(score, sde), x0, times, "sigma2", "sum", noise=z)
    mean, std = sde.marginal_prob(x0, times.t)
    xt = mean + std[:, None] * z
    textbook = (std[:, None] ** 2 * (score(xt, times.t) + z / std[:, None]) ** 2).sum(1)
    torch.testing.assert_close(got.double(), textbook)


@pytest.mark.parametrize("name", sorted(SDES))
def test_importance_sampling_is_unbiased_and_reduces_variance(name):
    """Likelihood-weighted loss: the importance-sampled estimate has the same expectation as the
    uniform one (compared within 4 combined standard errors of the Monte Carlo means)."""
    sde = SDES[name]()
    n, d, eps = 400_000, 2, 1e-3
    x0 = _data(n, d, 4)
    exact = gaussian_score(sde)

    def imperfect(x, t):  # a score with excess loss at every t, so the check is not trivial
        return exact(x, t) * 0.8

    estimates = {}
    for label, sampler in (("uniform", uniform_times), ("importance", importance_times)):
        gen = torch.Generator().manual_seed(5)
        times = sampler(sde, n, LossConfig(eps=eps), torch.device("cpu"), generator=gen)
        times.t = times.t.double()
        torch.manual_seed(6)
        model = ScoreModel.from_score_fn(imperfect, sde)
        losses = dsm_loss(model, x0, times, "likelihood").double()
        estimates[label] = (losses.mean().item(), losses.std().item() / math.sqrt(n))
    (mu_u, se_u), (mu_i, se_i) = estimates["uniform"], estimates["importance"]
    assert abs(mu_u - mu_i) < 4 * math.hypot(se_u, se_i), estimates
    if name != "vesde":  # for VE, g^2/std^2 is constant: importance sampling is uniform
        assert se_i < se_u
