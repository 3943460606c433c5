"""Guidance: conditional scores built from unconditional pieces by Bayes' rule for scores,

    grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x),

each returned as a plain ``score_fn(x, t)``, so it composes with every sampler (the adaptive
ODE included) and samplers stay unaware of it. Terms that need autograd enable it themselves
(samplers run under ``torch.no_grad``).

* :func:`classifier_guided`: a noise-conditional classifier's grad log p_t(y | x_t) (Song et
  al. 2021, sec. 5 and app. I; Dhariwal & Nichol 2021) times a scale.
* :func:`classifier_free_guided`: a class-conditional model's own conditional and "no class"
  scores, s_u + w (s_c - s_u) (Ho & Salimans 2022). Scale 1 is the conditional score in both.
* :func:`measurement_guided`: noisy linear measurements y = A x + e, e ~ N(0, s^2 I), through
  the denoiser D(x_t) = E[x_0 | x_t] (Tweedie), as in diffusion posterior sampling (Chung et
  al. 2023): p_t(y | x_t) ~ N(y; A D(x_t), s^2 I + r_t^2 A A^T). With r_t = 0 this is DPS's
  Gaussian likelihood; with r_t^2 = sigma_t^2 d^2 / (sigma_t^2 + d^2) (sigma_t = std / alpha,
  d = the data std) it is the posterior variance of x_0 | x_t for data of std d (Song, Vahdat
  et al. 2023, PiGDM), which makes it exact for isotropic Gaussian data.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_score.conditioning.operators import LinearOperator
from lightning_score.nets.score import ScoreModel
from lightning_score.sde import SDE, ScoreFn, batch_broadcast

#: a noise-conditional classifier: logits of p_t(y | x_t), shape (B, classes)
NoisyClassifier = Callable[[Tensor, Tensor], Tensor]


def class_labels(labels: Tensor, num_classes: int) -> Tensor:
    """``labels`` as a long tensor, or a one-line error when a class id is out of range."""
    labels = torch.as_tensor(labels).long()
    if labels.dim() != 1:
        raise ValueError(f"class labels must be one id per sample (shape (B,)), got {labels.shape}")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.numel():
        raise ValueError(
            f"class id {int(bad[0])} is out of range: this model has classes 0..{num_classes - 1}"
        )
    return labels


def _batch_labels(labels: Tensor, x: Tensor) -> Tensor:
    if labels.shape[0] != x.shape[0]:
        raise ValueError(
            f"{labels.shape[0]} class labels for a batch of {x.shape[0]} samples: give one per sample"
        )
    return labels.to(x.device)


def classifier_guided(
    score_fn: ScoreFn,
    classifier: NoisyClassifier,
    labels: Tensor,
    num_classes: int,
    scale: float = 1.0,
) -> ScoreFn:
    """s(x, t) + scale * grad_x log p_t(label | x): with the exact noisy classifier and scale 1,
    the score of p_t(x | label). One classifier forward and backward per score evaluation."""
    labels = class_labels(labels, num_classes)

    def guided(x: Tensor, t: Tensor) -> Tensor:
        wanted = _batch_labels(labels, x)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_p = F.log_softmax(classifier(x_in, t), dim=1)
            chosen = log_p.gather(1, wanted[:, None]).sum()
            (grad,) = torch.autograd.grad(chosen, x_in)
        return score_fn(x, t) + scale * grad.to(x.dtype)

    return guided


def require_conditional(model: ScoreModel) -> None:
    """One-line error when classifier-free guidance is asked of an unconditional model."""
    if not model.num_classes:
        raise ValueError(
            "classifier-free guidance needs a class-conditional model, but this one is "
            "unconditional (model.num_classes=0): train with model.num_classes > 0, or use "
            "classifier guidance with a noisy classifier"
        )


def classifier_free_guided(model: ScoreModel, labels: Tensor, scale: float = 1.0) -> ScoreFn:
    """s_u + scale (s_c - s_u) of a class-conditional model, both in one batched call; scale 1
    is the conditional score alone (one network pass), scale > 1 sharpens towards the class."""
    require_conditional(model)
    labels = class_labels(labels, model.num_classes)

    def conditional(x: Tensor, t: Tensor) -> Tensor:
        return model(x, t, _batch_labels(labels, x))

    def guided(x: Tensor, t: Tensor) -> Tensor:
        wanted = _batch_labels(labels, x)
        null = torch.full_like(wanted, model.num_classes)
        both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([wanted, null]))
        cond, uncond = both.chunk(2)
        return uncond + scale * (cond - uncond)

    return conditional if scale == 1.0 else guided


def tweedie(sde: SDE, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
    """D(x_t) = E[x_0 | x_t] = (x_t + std^2 s(x_t, t)) / alpha, from the score at (x_t, t)."""
    alpha, std = sde.alpha(t), sde.std(t)
    return (x + batch_broadcast(std**2, x) * score) / batch_broadcast(alpha, x)


def measurement_guided(
    score_fn: ScoreFn,
    sde: SDE,
    operator: LinearOperator,
    y: Tensor,
    noise_std: float,
    *,
    scale: float = 1.0,
    data_std: float | None = None,
    network_sigma: float | None = None,
) -> ScoreFn:
    """s(x, t) + scale * grad_x log N(y; A D(x, t), noise_std^2 I + r_t^2 A A^T) (module doc).

    The gradient is J_D^T A^T (noise_std^2 I + r_t^2 A A^T)^{-1} (y - A D) with J_D the
    denoiser's Jacobian. DPS takes J_D from the network by a backward pass. At high noise that
    is unreliable: D = (x + std^2 s) / alpha multiplies the network's error by sigma = std /
    alpha (100+ at the end of a VP SDE), while y says next to nothing about x_t there. Above
    the noise level ``network_sigma`` (None: never) J_D is therefore that of data with std
    ``data_std``, (1 / alpha) d^2 / (d^2 + sigma^2) I, which needs no backward pass and is exact
    for isotropic Gaussian data. ``data_std`` None gives r_t = 0 (plain DPS), which needs
    ``noise_std > 0`` and ``network_sigma`` None.
    """
    if noise_std < 0:
        raise ValueError(f"the measurement noise std must be >= 0, got {noise_std}")
    if data_std is None and (noise_std == 0 or network_sigma is not None):
        raise ValueError(
            "measurement guidance needs the data std for noiseless measurements and for the "
            "Gaussian Jacobian at high noise (network_sigma): give data_std"
        )
    noise_var = noise_std**2

    def posterior_var(t: Tensor) -> Tensor:
        """r_t^2 = sigma^2 d^2 / (sigma^2 + d^2): Var[x_0 | x_t] for data of std d."""
        if data_std is None:
            return torch.zeros_like(t)
        sigma2 = sde.sigma(t) ** 2
        return sigma2 * data_std**2 / (sigma2 + data_std**2)

    def guided(x: Tensor, t: Tensor) -> Tensor:
        target = y.to(x)
        if target.shape[0] != x.shape[0]:
            raise ValueError(
                f"{target.shape[0]} measurements for a batch of {x.shape[0]}: give one per sample"
            )
        r2 = posterior_var(t)
        if network_sigma is not None and bool((sde.sigma(t) > network_sigma).all()):
            score = score_fn(x, t)
            residual = target - operator(tweedie(sde, x, t, score))
            sigma2 = sde.sigma(t) ** 2
            jac = data_std**2 / (data_std**2 + sigma2) / sde.alpha(t)  # type: ignore[operator]
            weighted = operator.adjoint(operator.gram_solve(residual, noise_var, r2))
            return score + scale * batch_broadcast(jac, x) * weighted
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            score = score_fn(x_in, t)
            residual = target - operator(tweedie(sde, x_in, t, score))
            log_lik = -0.5 * (residual * operator.gram_solve(residual, noise_var, r2)).sum()
            (grad,) = torch.autograd.grad(log_lik, x_in)
        return score.detach() + scale * grad

    return guided


__all__ = [
    "NoisyClassifier",
    "class_labels",
    "classifier_free_guided",
    "classifier_guided",
    "measurement_guided",
    "require_conditional",
    "tweedie",
]
