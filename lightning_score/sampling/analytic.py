"""Exact scores of Gaussian-mixture data under any linear SDE: ground truth for testing samplers.

If x_0 ~ sum_k w_k N(mu_k, s_k^2 I) and x_t = alpha(t) x_0 + std(t) z (from ``sde.marginal_prob``),
then p_t = sum_k w_k N(alpha mu_k, (alpha^2 s_k^2 + std^2) I), whose score is closed-form. The
returned functions plug into every sampler exactly like a trained model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from lightning_score.sde import SDE, ScoreFn


def _mixture_terms(
    sde: SDE, weights: Sequence[float], means: Tensor, stds: Sequence[float]
) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]:
    """For x_t and t: the component log-posteriors' logits log w_k + log N(x; alpha mu_k, v_k I),
    the variances v_k = alpha^2 s_k^2 + std^2 (B, K), alpha (B, 1) and the flat means (K, D)."""
    log_w = torch.log(torch.as_tensor(weights, dtype=torch.float64))
    s2 = torch.as_tensor(stds, dtype=torch.float64) ** 2
    mu = means.to(torch.float64).flatten(1)
    if not (log_w.shape[0] == s2.shape[0] == mu.shape[0]):
        raise ValueError("weights, means and stds must have one entry per mixture component")

    def terms(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        ones = torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)
        alpha_x, std = sde.marginal_prob(ones, t)
        alpha = alpha_x.reshape(-1, 1)  # (B, 1)
        var = alpha**2 * s2.to(x) + std.reshape(-1, 1) ** 2  # (B, K)
        flat, mean = x.flatten(1), mu.to(x)
        # ||x - alpha mu_k||^2 through matmuls, without a (B, K, D) tensor
        sq = (
            flat.pow(2).sum(1, keepdim=True)
            - 2 * alpha * flat @ mean.T
            + alpha**2 * mean.pow(2).sum(1)
        )
        logits = log_w.to(x) - 0.5 * flat.shape[1] * var.log() - 0.5 * sq / var
        return logits, var, alpha, mean

    return terms


def gaussian_mixture_score(
    sde: SDE, weights: Sequence[float], means: Tensor, stds: Sequence[float]
) -> ScoreFn:
    """Score of p_t for data sum_k w_k N(means[k], stds[k]^2 I); ``means`` is ``(K, *data_shape)``."""
    terms = _mixture_terms(sde, weights, means, stds)

    def score(x: Tensor, t: Tensor) -> Tensor:
        logits, var, alpha, mean = terms(x, t)
        weight = torch.softmax(logits, dim=1) / var  # responsibility_k / v_k
        # score = -sum_k weight_k (x - alpha mu_k)
        flat = x.flatten(1)
        return (alpha * weight @ mean - weight.sum(1, keepdim=True) * flat).reshape(x.shape)

    return score


def gaussian_mixture_classifier(
    sde: SDE, weights: Sequence[float], means: Tensor, stds: Sequence[float]
) -> Callable[[Tensor, Tensor], Tensor]:
    """The exact noisy classifier of the mixture's components: logits of p_t(k | x_t), for
    classifier guidance with a known answer (its guided score is component k's own score)."""
    terms = _mixture_terms(sde, weights, means, stds)

    def classifier(x: Tensor, t: Tensor) -> Tensor:
        return terms(x, t)[0]

    return classifier


def gaussian_cov_score(sde: SDE, mean: Tensor, cov: Tensor) -> ScoreFn:
    """Score of p_t = N(alpha m, alpha^2 S + std^2 I) for data N(m, S) with a full covariance S
    (vectors (B, D)): in S's eigenbasis the marginal covariance is diagonal at every t."""
    evals, basis = torch.linalg.eigh(cov.to(torch.float64))
    if evals.min() < 0:
        raise ValueError("the covariance must be positive semi-definite")

    def score(x: Tensor, t: Tensor) -> Tensor:
        ones = torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)
        alpha_x, std = sde.marginal_prob(ones, t)
        alpha, std = alpha_x.reshape(-1, 1), std.reshape(-1, 1)
        q = basis.to(x)
        coords = (x - alpha * mean.to(x)) @ q
        return -(coords / (alpha**2 * evals.to(x) + std**2)) @ q.T

    return score


def gaussian_score(sde: SDE, mean: Tensor, std: float) -> ScoreFn:
    """Score of p_t = N(alpha mean, (alpha^2 std^2 + std_t^2) I) for data N(mean, std^2 I)."""

    def score(x: Tensor, t: Tensor) -> Tensor:
        ones = torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)
        alpha_x, std_t = sde.marginal_prob(ones, t)
        alpha = alpha_x.reshape(-1, *([1] * (x.dim() - 1)))
        var = alpha**2 * std**2 + std_t.reshape(alpha.shape) ** 2
        return -(x - alpha * mean.to(x)) / var

    return score
