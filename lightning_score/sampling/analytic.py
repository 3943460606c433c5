"""Exact scores of Gaussian-mixture data under any linear SDE: ground truth for testing samplers.

If x_0 ~ sum_k w_k N(mu_k, s_k^2 I) and x_t = alpha(t) x_0 + std(t) z (from ``sde.marginal_prob``),
then p_t = sum_k w_k N(alpha mu_k, (alpha^2 s_k^2 + std^2) I), whose score is closed-form. The
returned functions plug into every sampler exactly like a trained model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_score.sde import SDE, ScoreFn


def gaussian_mixture_score(
    sde: SDE, weights: Sequence[float], means: Tensor, stds: Sequence[float]
) -> ScoreFn:
    """Score of p_t for data sum_k w_k N(means[k], stds[k]^2 I); ``means`` is ``(K, *data_shape)``."""
    log_w = torch.log(torch.as_tensor(weights, dtype=torch.float64))
    s2 = torch.as_tensor(stds, dtype=torch.float64) ** 2
    mu = means.to(torch.float64).flatten(1)
    if not (log_w.shape[0] == s2.shape[0] == mu.shape[0]):
        raise ValueError("weights, means and stds must have one entry per mixture component")

    def score(x: Tensor, t: Tensor) -> Tensor:
        ones = torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)
        alpha_x, std = sde.marginal_prob(ones, t)
        alpha = alpha_x.reshape(-1, 1)  # (B, 1)
        var = alpha**2 * s2.to(x) + std.reshape(-1, 1) ** 2  # (B, K)
        flat, means = x.flatten(1), mu.to(x)
        # ||x - alpha mu_k||^2 through matmuls, without a (B, K, D) tensor
        sq = (
            flat.pow(2).sum(1, keepdim=True)
            - 2 * alpha * flat @ means.T
            + alpha**2 * means.pow(2).sum(1)
        )
        logits = log_w.to(x) - 0.5 * flat.shape[1] * var.log() - 0.5 * sq / var
        weight = torch.softmax(logits, dim=1) / var  # responsibility_k / v_k
        # score = -sum_k weight_k (x - alpha mu_k)
        return (alpha * weight @ means - weight.sum(1, keepdim=True) * flat).reshape(x.shape)

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
