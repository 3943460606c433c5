"""Forward SDEs: Song et al. (2021), "Score-Based Generative Modeling through SDEs", and the EDM
schedule of Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based Generative
Models".

Each SDE object is the single source of truth for its noise schedule: the parameterization (and
through it the network conditioning and the loss), every sampler and the likelihood code ask it,
and nothing else stores ``sigma_max`` or ``beta_min``. Every SDE here is linear with the Gaussian
kernel x_t = alpha(t) x_0 + std(t) z; ``sigma(t) = std(t) / alpha(t)`` is EDM's noise level (the
noise-to-signal ratio), which few-step samplers and EDM's preconditioning work in. Equation
numbers refer to Song et al.'s arXiv v2 unless marked EDM.

Shapes: ``x`` is ``(B, ...)``; ``t`` is ``(B,)``; per-sample scalars come back as ``(B,)`` and
are broadcast with :func:`batch_broadcast`.
"""

from __future__ import annotations

import abc
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_score.config import SDEConfig, require, require_choice

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


#: most discretization steps an SDE takes: its tables hold N numbers each
MAX_STEPS = 1_000_000


class SDE(abc.ABC):
    """dx = f(x, t) dt + g(t) dw on t in [0, T]."""

    #: data convention: True means the model sees data in [-1, 1], False means [0, 1].
    centered: bool
    #: where samplers stop by default.
    default_eps: float
    #: the smallest training time by default (``loss.eps``): 1e-5 for Song et al.'s SDEs.
    train_eps: float = 1e-5
    #: the grid of PC samplers under ``sampling.schedule=auto``: the paper's uniform grid in t.
    pc_schedule: str = "uniform"
    #: the parameterization (``lightning_score.parameterization``) trained with this SDE by default.
    default_parameterization: str
    #: few-step solvers hand over to the final denoising step once sigma(t) falls to this level
    #: (when ``sampling.eps`` is left to the SDE): below it a step changes nothing they can use.
    few_step_sigma_min: float = 0.0
    #: DDPM's ancestral step uses the forward variance beta_i (the paper's VP choice) rather than
    #: the exact posterior variance.
    ancestral_uses_forward_variance: bool = False
    #: whether the kernel x_t = alpha x_0 + std z exists (every SDE here; a user's SDE may lack it).
    linear: bool = True

    def __init__(self, N: int = 1000, T: float = 1.0) -> None:
        if not 0 < N <= MAX_STEPS:
            raise ValueError(
                f"sde.N must be a number of discretization steps in [1, {MAX_STEPS:,}], got {N} "
                "(the papers use 1000 or 2000)"
            )
        self.N = N
        self.T = T

    @classmethod
    def from_config(cls, cfg: SDEConfig) -> SDE:
        """The SDE that the ``sde`` config section describes (its class's entries)."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from a config")

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
    def time_of_sigma(self, sigma: Tensor) -> Tensor:
        """Inverse of :meth:`sigma`: the time at which std / alpha equals ``sigma``."""

    @abc.abstractmethod
    def likelihood_density_antiderivative(self, t: Tensor) -> Tensor:
        """An antiderivative of g(t)^2 / std(t)^2, the density of importance-sampled times."""

    @abc.abstractmethod
    def likelihood_density_inverse(self, value: Tensor) -> Tensor:
        """Inverse of :meth:`likelihood_density_antiderivative`."""

    # -- shared pieces ----------------------------------------------------------------------
    def alpha(self, t: Tensor) -> Tensor:
        """Signal scale alpha(t) of the kernel, shape (B,)."""
        ones = torch.ones(t.shape[0], 1, device=t.device, dtype=t.dtype)
        return self.marginal_prob(ones, t)[0].reshape(-1)

    def std(self, t: Tensor) -> Tensor:
        """Marginal std at time t, shape (B,)."""
        zeros = torch.zeros(t.shape[0], 1, device=t.device, dtype=t.dtype)
        return self.marginal_prob(zeros, t)[1]

    def sigma(self, t: Tensor) -> Tensor:
        """EDM's noise level std(t) / alpha(t), increasing in t."""
        return self.std(t) / self.alpha(t)

    def diffusion_sq(self, t: Tensor) -> Tensor:
        """g(t)^2, shape (B,)."""
        zeros = torch.zeros(t.shape[0], 1, device=t.device, dtype=t.dtype)
        return self.sde(zeros, t)[1] ** 2

    def time_bins(self, n: int, eps: float) -> Tensor:
        """``n + 1`` edges over [eps, T] for the per-time loss log: uniform in t by default."""
        return torch.linspace(eps, self.T, n + 1, dtype=torch.float64)

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


class VESDE(SDE):
    """Variance exploding SDE (eq. 30): sigma(t) = sigma_min (sigma_max / sigma_min)^t."""

    centered = False
    default_eps = 1e-5
    default_parameterization = "ve"

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

    @classmethod
    def from_config(cls, cfg: SDEConfig) -> VESDE:
        return cls(**_given(cfg, "sigma_min", "sigma_max"), N=cfg.N)

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def time_of_sigma(self, sigma: Tensor) -> Tensor:
        return torch.log(sigma / self.sigma_min) / self.log_ratio

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        drift = torch.zeros_like(x)
        diffusion = self.sigma(t) * math.sqrt(2 * self.log_ratio)
        return drift, diffusion

    def marginal_prob(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        # The paper (and official code) uses std = sigma(t), not sqrt(sigma(t)^2 - sigma(0)^2).
        return x, self.sigma(t)

    def prior_std(self) -> float:
        return self.sigma_max

    def likelihood_density_antiderivative(self, t: Tensor) -> Tensor:
        # g^2 / sigma^2 = 2 log(sigma_max / sigma_min): constant, so importance sampling is uniform.
        return 2 * self.log_ratio * t

    def likelihood_density_inverse(self, value: Tensor) -> Tensor:
        return value / (2 * self.log_ratio)


class VPSDE(SDE):
    """Variance preserving SDE (eq. 32), the continuous limit of DDPM with linear betas."""

    centered = True
    default_eps = 1e-3
    default_parameterization = "vp"
    ancestral_uses_forward_variance = True

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000) -> None:
        super().__init__(N)
        if not 0 <= beta_min < beta_max:
            raise ValueError(
                f"VP SDEs need 0 <= beta_min < beta_max, got beta_min={beta_min}, "
                f"beta_max={beta_max}: set sde.beta_min below sde.beta_max"
            )
        self.beta_0 = float(beta_min)
        self.beta_1 = float(beta_max)

    @classmethod
    def from_config(cls, cfg: SDEConfig) -> VPSDE:
        return cls(beta_min=cfg.beta_min, beta_max=cfg.beta_max, N=cfg.N)

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

    def sigma(self, t: Tensor) -> Tensor:
        # std / alpha = sqrt(e^B - 1)
        return torch.sqrt(torch.expm1(self.integral_beta(t)))

    def time_of_sigma(self, sigma: Tensor) -> Tensor:
        return self.time_of_integral_beta(torch.log1p(sigma**2))

    def prior_std(self) -> float:
        return 1.0

    def likelihood_density_antiderivative(self, t: Tensor) -> Tensor:
        # g^2 / std^2 = beta / (1 - e^{-B});  d/dt log(e^B - 1) = beta e^B / (e^B - 1).
        b = self.integral_beta(t)
        return torch.log(torch.expm1(b))

    def likelihood_density_inverse(self, value: Tensor) -> Tensor:
        return self.time_of_integral_beta(torch.nn.functional.softplus(value))


class SubVPSDE(VPSDE):
    """Sub-VP SDE (eq. 34): same drift as VP, diffusion g^2 = beta (1 - e^{-2B})."""

    ancestral_uses_forward_variance = False
    # sigma(1e-3) is 1e-4 here, a hundred times below the VP and VE end points (0.01): a
    # log-sigma grid down to it spends a third of its steps where nothing changes.
    few_step_sigma_min = 0.01

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

    def sigma(self, t: Tensor) -> Tensor:
        # (1 - e^{-B}) / e^{-B/2} = 2 sinh(B / 2)
        return 2 * torch.sinh(self.integral_beta(t) / 2)

    def time_of_sigma(self, sigma: Tensor) -> Tensor:
        return self.time_of_integral_beta(2 * torch.asinh(sigma / 2))

    def likelihood_density_antiderivative(self, t: Tensor) -> Tensor:
        # g^2/std^2 = beta (e^B + 1)/(e^B - 1); antiderivative 2 log(e^B - 1) - B = log(4 sinh^2(B/2)).
        b = self.integral_beta(t)
        return 2 * torch.log(2 * torch.sinh(b / 2))

    def likelihood_density_inverse(self, value: Tensor) -> Tensor:
        b = 2 * torch.asinh(torch.exp(value / 2) / 2)
        return self.time_of_integral_beta(b)


class EDMSDE(SDE):
    """EDM's schedule (Karras et al. 2022, sec. 3): sigma(t) = t, alpha(t) = 1, so
    dx = sqrt(2 t) dw (EDM eq. 6 with sigma' sigma = t) on t in [sigma_min, sigma_max].

    Time *is* the noise level, so T = sigma_max (80) and sampling stops at sigma_min (0.002).
    Data are in [-1, 1] as in EDM, where sigma_data = 0.5.
    """

    centered = True
    default_parameterization = "edm"
    pc_schedule = "edm"  # uniform in t = sigma would spend every step at large sigma

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, N: int = 1000) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(
                f"the EDM SDE needs 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, "
                f"sigma_max={sigma_max}: set sde.sigma_min below sde.sigma_max"
            )
        super().__init__(N, T=float(sigma_max))
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.default_eps = self.train_eps = self.sigma_min

    @classmethod
    def from_config(cls, cfg: SDEConfig) -> EDMSDE:
        return cls(**_given(cfg, "sigma_min", "sigma_max"), N=cfg.N)

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.zeros_like(x), torch.sqrt(2 * t)

    def marginal_prob(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return x, t

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def time_of_sigma(self, sigma: Tensor) -> Tensor:
        return sigma

    def prior_std(self) -> float:
        return self.sigma_max

    def time_bins(self, n: int, eps: float) -> Tensor:
        """Geometric edges: the noise levels span five decades."""
        return torch.logspace(math.log10(eps), math.log10(self.T), n + 1, dtype=torch.float64)

    def likelihood_density_antiderivative(self, t: Tensor) -> Tensor:
        return 2 * torch.log(t)  # g^2 / std^2 = 2 / t

    def likelihood_density_inverse(self, value: Tensor) -> Tensor:
        return torch.exp(value / 2)


SDES: dict[str, type[SDE]] = {
    "vesde": VESDE,
    "vpsde": VPSDE,
    "subvpsde": SubVPSDE,
    "edm": EDMSDE,
}


def _given(cfg: SDEConfig, *names: str) -> dict[str, float]:
    """The entries of ``names`` that the config sets (None means "the SDE's default")."""
    return {n: getattr(cfg, n) for n in names if getattr(cfg, n) is not None}


def validate_sde_config(cfg: SDEConfig) -> None:
    """Check the ``sde`` section and fill in the defaults it leaves open (None), so that the
    saved config says what really runs."""
    require_choice(cfg.name, SDES, "sde.name")
    require(cfg.N > 0, f"sde.N must be a positive number of steps, got {cfg.N}")
    takes = inspect.signature(SDES[cfg.name].__init__).parameters
    if "sigma_min" in takes:
        for key in ("sigma_min", "sigma_max"):
            if getattr(cfg, key) is None:
                setattr(cfg, key, float(takes[key].default))
            value = getattr(cfg, key)
            require(value > 0, f"sde.{key} must be > 0, got {value}")
        require(
            cfg.sigma_min < cfg.sigma_max,  # type: ignore[operator]
            f"sde.sigma_min ({cfg.sigma_min}) must be below sde.sigma_max ({cfg.sigma_max})",
        )
    if "beta_min" in takes:
        require(cfg.beta_min >= 0, f"sde.beta_min must be >= 0, got {cfg.beta_min}")
        require(
            cfg.beta_min < cfg.beta_max,
            f"sde.beta_min ({cfg.beta_min}) must be below sde.beta_max ({cfg.beta_max})",
        )


def build_sde(cfg: SDEConfig) -> SDE:
    """The SDE of a validated ``sde`` section."""
    return SDES[cfg.name].from_config(cfg)
