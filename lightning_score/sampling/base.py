"""Pieces every sampler shares: the result type, the NFE counter, time and noise helpers, and the
one-step chain implied by a linear SDE's perturbation kernel."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from lightning_score.sde import SDE, ScoreFn


@dataclass
class SampleResult:
    """Samples in model space (map to images with ``sde.unscale_data``) and the true NFE."""

    samples: Tensor
    nfe: int


class CountingScore:
    """Wraps ``score_fn`` and counts its calls: the only honest NFE (every sampler reports this)."""

    def __init__(self, score_fn: ScoreFn) -> None:
        self.score_fn = score_fn
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        return self.score_fn(x, t)


class StepHook(Protocol):
    """What :func:`~lightning_score.sampling.sample` calls on the sampler's state between moves.

    ``x`` is the state in model space at time ``t``: after the prior draw (t = T), after every
    move of a fixed-grid sampler (each predictor, corrector, solver or resampling move), and
    once on the returned sample with ``t = None`` (an estimate of clean data). The hook returns
    the state to continue from: projections (inpainting, colorization, noiseless measurements)
    replace a part of it; ``generator`` is the sampler's, so a seed still fixes the samples.
    Guidance terms do not need a hook: they wrap ``score_fn``.
    """

    def __call__(self, x: Tensor, t: float | None, generator: torch.Generator | None) -> Tensor:
        """The state to continue from."""
        ...


#: a hook bound to the sampler's generator, as samplers call it: ``hook(x, t)``
BoundHook = Callable[[Tensor, "float | None"], Tensor]


@dataclass
class Condition:
    """What conditions a batch of samples: the (guided) score and an optional projection hook."""

    score_fn: ScoreFn
    hook: StepHook | None = None


def no_hook(x: Tensor, t: float | None) -> Tensor:
    """The identity: what samplers call between moves when nothing conditions them."""
    return x


def batch_time(t: float | Tensor, x: Tensor) -> Tensor:
    """Time ``t`` as a ``(B,)`` tensor on the device and dtype of ``x`` (what ``score_fn`` takes)."""
    return torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])


def noise_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``x``, from ``generator`` (all sampler noise goes here)."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def linear_sde_reason(sde: SDE, what: str) -> str | None:
    """Why ``what`` cannot run on ``sde``, or None.

    The chain-based predictors and the correctors derive a discrete step from the perturbation
    kernel x_t = alpha(t) x_0 + std(t) z, which exists for linear SDEs only (every SDE of
    ``lightning_score.sde``; a user's SDE says so with ``linear``).
    """
    if sde.linear:
        return None
    return (
        f"{what} derives its step from the Gaussian kernel x_t = alpha(t) x_0 + std(t) z of a linear "
        f"SDE; {type(sde).__name__} is not linear"
    )


def kernel(sde: SDE, t: float, like: Tensor) -> tuple[Tensor, Tensor]:
    """alpha(t) and std(t) of x_t = alpha(t) x_0 + std(t) z, as 0-dim tensors like ``like``."""
    ones = torch.ones(1, 1, dtype=like.dtype, device=like.device)
    mean, std = sde.marginal_prob(
        ones, torch.full((1,), float(t), dtype=like.dtype, device=like.device)
    )
    return mean.reshape(()), std.reshape(())


def chain_step(sde: SDE, t: float, s: float, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The forward chain step from time s < t implied by the kernel: x_t = a x_s + G z.

    a = alpha(t) / alpha(s) and G^2 = std(t)^2 - a^2 std(s)^2 (variances of a linear SDE add).
    On the N-point grid this is SMLD's chain for VE (eq. 8) and DDPM's for VP with
    beta_i = 1 - a^2 (eq. 10); for sub-VP it is the exact transition of the SDE. Deriving it from
    the sampler's own grid (not from a fixed N) keeps few-step samplers consistent.
    Returns (a, G^2, std(t), std(s)).
    """
    alpha_t, std_t = kernel(sde, t, like)
    alpha_s, std_s = kernel(sde, s, like)
    a = alpha_t / alpha_s
    return a, std_t**2 - a**2 * std_s**2, std_t, std_s


def forward_move(
    sde: SDE, x: Tensor, t: float, t_next: float, generator: torch.Generator | None
) -> Tensor:
    """Diffuse x from time t up to t_next > t with the forward kernel: x' = a x + G z (RePaint's
    jump back in time; exact for a linear SDE, no score evaluation)."""
    a, g2, _, _ = chain_step(sde, t_next, t, x)
    return a * x + g2.sqrt() * noise_like(x, generator)
