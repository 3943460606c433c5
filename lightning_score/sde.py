"""Forward SDEs of Song et al. (2021), "Score-Based Generative Modeling through SDEs".

Each SDE object is the single source of truth for its noise schedule: the loss, the network
conditioning (``nets/score.py``), every sampler and the likelihood code ask it, and nothing else
stores ``sigma_max`` or ``beta_min``. Equation numbers refer to the paper's arXiv v2.

Shapes: ``x`` is ``(B, ...)``; ``t`` is ``(B,)``; per-sample scalars come back as ``(B,)`` and
are broadcast with :func:`batch_broadcast`.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

ScoreFn = Callable[[Tensor, Tensor], Tensor]


def batch_broadcast(v: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample ``(B,)`` tensor so it broadcasts against ``x`` of shape ``(B, ...)``."""
    return v.reshape(v.shape[0], *([1] * (x.dim() - 1)))


def _as_batch_time(t: Tensor | float, x: Tensor) -> Tensor:
    if not torch.is_tensor(t):
        t = torch.tensor(float(t), device=x.device, dtype=x.dtype)
    if t.dim() == 0:
        t = t.expand(x.shape[0])
    return t.to(device=x.device, dtype=x.dtype)


class SDE(abc.ABC):
    """dx = f(x, t) dt + g(t) dw on t in [0, T]."""

    #: data convention: True means the model sees data in [-1, 1], False means [0, 1].
    centered: bool
    #: smallest time used for training and where samplers stop by default.
    default_eps: float

    def __init__(self, N: int = 1000, T: float = 1.0) -> None:
        if N <= 0:
            raise ValueError(f"sde.N must be a positive number of discretization steps, got {N}")
        self.N = N
        self.T = T

    @abc.abstractmethod
    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Drift f(x, t) (shape of x) and diffusion g(t) (shape (B,))."""

    @abc.abstractmethod
    def marginal_prob(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean (shape of x) and std (shape (B,)) of the Gaussian perturbation kernel p_0t(x_t | x_0)."""

    @abc.abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the prior p_T (a zero-mean isotropic Gaussian)."""

    @abc.abstractmethod
    def network_condition(self, t: Tensor) -> Tensor:
        """The noise-level input the score network is conditioned on at time t."""

    @abc.abstractmethod
    def discretize(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """One step of the paper's discrete chain x_{i+1} = x_i + f_i + G_i z (SMLD for VE, DDPM for VP)."""

    @abc.abstractmethod
    def likelihood_density_antiderivative(self, t: Tensor) -> Tensor:
        """An antiderivative of g(t)^2 / std(t)^2, the density of importance-sampled times."""

    @abc.abstractmethod
    def likelihood_density_inverse(self, value: Tensor) -> Tensor:
        """Inverse of :meth:`likelihood_density_antiderivative`."""

    # -- shared pieces ----------------------------------------------------------------------
    def std(self, t: Tensor) -> Tensor:
        """Marginal std at time t, shape (B,)."""
        zeros = torch.zeros(t.shape[0], 1, device=t.device, dtype=t.dtype)
        return self.marginal_prob(zeros, t)[1]

    def diffusion_sq(self, t: Tensor) -> Tensor:
        """g(t)^2, shape (B,)."""
        zeros = torch.zeros(t.shape[0], 1, device=t.device, dtype=t.dtype)
        return self.sde(zeros, t)[1] ** 2

    def prior_sampling(
        self,
        shape: tuple[int, ...] | torch.Size,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Draw x_T ~ p_T = N(0, prior_std^2 I)."""
        z = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        return z * self.prior_std()

    def prior_logp(self, z: Tensor) -> Tensor:
        """log N(z; 0, prior_std^2 I), summed over all but the batch dimension."""
        s = self.prior_std()
        d = z[0].numel()
        sq = z.flatten(1).pow(2).sum(dim=1)
        return -0.5 * d * math.log(2 * math.pi * s**2) - sq / (2 * s**2)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (eq. 6) or the probability-flow ODE (eq. 13) for ``score_fn``."""
        return ReverseSDE(self, score_fn, probability_flow)

    def scale_data(self, x01: Tensor) -> Tensor:
        """Map images in [0, 1] into the range this SDE's models see."""
        return x01 * 2.0 - 1.0 if self.centered else x01

    def unscale_data(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`scale_data`: model-space images back to [0, 1]."""
        return (x + 1.0) / 2.0 if self.centered else x


@dataclass
class ReverseSDE:
    """Reverse of a forward SDE given a score function; ``probability_flow`` gives the ODE."""

    forward_sde: SDE
    score_fn: ScoreFn
    probability_flow: bool = False

    @property
    def N(self) -> int:
        return self.forward_sde.N

    @property
    def T(self) -> float:
        return self.forward_sde.T

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Reverse drift f - g^2 s (eq. 6) or f - g^2 s / 2 (eq. 13), and diffusion (0 for the ODE)."""
        t = _as_batch_time(t, x)
        drift, diffusion = self.forward_sde.sde(x, t)
        score = self.score_fn(x, t)
        factor = 0.5 if self.probability_flow else 1.0
        drift = drift - batch_broadcast(diffusion**2, x) * score * factor
        diffusion = torch.zeros_like(diffusion) if self.probability_flow else diffusion
        return drift, diffusion

    def discretize(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Reverse of the discrete chain (the "reverse diffusion" predictor of the paper, eq. 46)."""
        t = _as_batch_time(t, x)
        f, G = self.forward_sde.discretize(x, t)
        factor = 0.5 if self.probability_flow else 1.0
        rev_f = f - batch_broadcast(G**2, x) * self.score_fn(x, t) * factor
        rev_G = torch.zeros_like(G) if self.probability_flow else G
        return rev_f, rev_G


class VESDE(SDE):
    """Variance exploding SDE (eq. 30): sigma(t) = sigma_min (sigma_max / sigma_min)^t."""

    centered = False
    default_eps = 1e-5

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000) -> None:
        super().__init__(N)
        if not 0 < sigma_min < sigma_max:
            raise ValueError(
                f"VE SDE needs 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, "
                f"sigma_max={sigma_max}: set sde.sigma_min below sde.sigma_max"
            )
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.log_ratio = math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        drift = torch.zeros_like(x)
        diffusion = self.sigma(t) * math.sqrt(2 * self.log_ratio)
        return drift, diffusion

    def marginal_prob(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        # The paper (and official code) uses std = sigma(t), not sqrt(sigma(t)^2 - sigma(0)^2).
        return x, self.sigma(t)

    def prior_std(self) -> float:
        return self.sigma_max

    def network_condition(self, t: Tensor) -> Tensor:
        return self.sigma(t)

    def discrete_sigmas(self, device: torch.device | str | None = None) -> Tensor:
        """The N noise levels of SMLD, geometric from sigma_min to sigma_max."""
        return torch.exp(
            torch.linspace(
                math.log(self.sigma_min), math.log(self.sigma_max), self.N, device=device
            )
        )

    def discretize(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        # SMLD chain: x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z  (eq. 8).
        timestep = (t * (self.N - 1) / self.T).round().long()
        sigmas = self.discrete_sigmas(t.device).to(x.dtype)
        sigma = sigmas[timestep]
        prev = torch.where(
            timestep == 0, torch.zeros_like(sigma), sigmas[(timestep - 1).clamp(min=0)]
        )
        return torch.zeros_like(x), torch.sqrt(sigma**2 - prev**2)

    def likelihood_density_antiderivative(self, t: Tensor) -> Tensor:
        # g^2 / sigma^2 = 2 log(sigma_max / sigma_min): constant, so importance sampling is uniform.
        return 2 * self.log_ratio * t

    def likelihood_density_inverse(self, value: Tensor) -> Tensor:
        return value / (2 * self.log_ratio)


class VPSDE(SDE):
    """Variance preserving SDE (eq. 32), the continuous limit of DDPM with linear betas."""

    centered = True
    default_eps = 1e-3

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000) -> None:
        super().__init__(N)
        if not 0 <= beta_min < beta_max:
            raise ValueError(
                f"VP SDEs need 0 <= beta_min < beta_max, got beta_min={beta_min}, "
                f"beta_max={beta_max}: set sde.beta_min below sde.beta_max"
            )
        self.beta_0 = float(beta_min)
        self.beta_1 = float(beta_max)

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_0 + t * (self.beta_1 - self.beta_0)

    def integral_beta(self, t: Tensor) -> Tensor:
        """B(t) = int_0^t beta(s) ds."""
        return self.beta_0 * t + 0.5 * (self.beta_1 - self.beta_0) * t**2

    def time_of_integral_beta(self, b: Tensor) -> Tensor:
        """Inverse of :meth:`integral_beta` (the positive root of the quadratic)."""
        a = 0.5 * (self.beta_1 - self.beta_0)
        return 2 * b / (self.beta_0 + torch.sqrt(self.beta_0**2 + 4 * a * b))

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        beta_t = self.beta(t)
        return -0.5 * batch_broadcast(beta_t, x) * x, torch.sqrt(beta_t)

    def marginal_prob(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        log_mean_coeff = -0.5 * self.integral_beta(t)  # eq. 33
        mean = batch_broadcast(torch.exp(log_mean_coeff), x) * x
        std = torch.sqrt(-torch.expm1(2.0 * log_mean_coeff))
        return mean, std

    def prior_std(self) -> float:
        return 1.0

    def network_condition(self, t: Tensor) -> Tensor:
        # DDPM-style networks take the discrete timestep index; continuous t maps onto [0, N-1].
        return t * (self.N - 1)

    def discrete_betas(self, device: torch.device | str | None = None) -> Tensor:
        """DDPM's beta_i = beta(t_i) / N on the N-point grid."""
        return torch.linspace(self.beta_0 / self.N, self.beta_1 / self.N, self.N, device=device)

    def discretize(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        # DDPM chain: x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z  (eq. 10).
        timestep = (t * (self.N - 1) / self.T).round().long()
        beta = self.discrete_betas(t.device).to(x.dtype)[timestep]
        alpha = 1.0 - beta
        f = batch_broadcast(torch.sqrt(alpha), x) * x - x
        return f, torch.sqrt(beta)

    def likelihood_density_antiderivative(self, t: Tensor) -> Tensor:
        # g^2 / std^2 = beta / (1 - e^{-B});  d/dt log(e^B - 1) = beta e^B / (e^B - 1).
        b = self.integral_beta(t)
        return torch.log(torch.expm1(b))

    def likelihood_density_inverse(self, value: Tensor) -> Tensor:
        return self.time_of_integral_beta(torch.nn.functional.softplus(value))


class SubVPSDE(VPSDE):
    """Sub-VP SDE (eq. 34): same drift as VP, diffusion g^2 = beta (1 - e^{-2B})."""

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        beta_t = self.beta(t)
        drift = -0.5 * batch_broadcast(beta_t, x) * x
        diffusion = torch.sqrt(beta_t * -torch.expm1(-2.0 * self.integral_beta(t)))
        return drift, diffusion

    def marginal_prob(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        log_mean_coeff = -0.5 * self.integral_beta(t)
        mean = batch_broadcast(torch.exp(log_mean_coeff), x) * x
        std = -torch.expm1(2.0 * log_mean_coeff)  # 1 - e^{-B}, eq. 35
        return mean, std

    def discretize(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        # No discrete chain in the paper: Euler-Maruyama of the SDE over one step of size T/N.
        dt = self.T / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)

    def likelihood_density_antiderivative(self, t: Tensor) -> Tensor:
        # g^2/std^2 = beta (e^B + 1)/(e^B - 1); antiderivative 2 log(e^B - 1) - B = log(4 sinh^2(B/2)).
        b = self.integral_beta(t)
        return 2 * torch.log(2 * torch.sinh(b / 2))

    def likelihood_density_inverse(self, value: Tensor) -> Tensor:
        b = 2 * torch.asinh(torch.exp(value / 2) / 2)
        return self.time_of_integral_beta(b)


SDES: dict[str, type[SDE]] = {"vesde": VESDE, "vpsde": VPSDE, "subvpsde": SubVPSDE}
