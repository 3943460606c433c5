"""A particle (sequential Monte Carlo) sampler for linear inverse problems y = A x + e,
e ~ N(0, s^2 I): samples that converge to the model's posterior as the particles K grow.

The target is the sampler's own reverse chain p_theta(x_{0:N}) (reverse-diffusion steps, eq. 46)
conditioned on y. A twisted particle filter (Wu et al. 2023, TDS; Naesseth et al. 2019) reaches
it through intermediate targets p_theta(x_t) G_t(x_t), with the twist the denoiser's likelihood

    G_t(x_t) = N(y; A D(x_t), s^2 I + r_t^2 A A^T),   D = Tweedie's E[x_0 | x_t],
    r_t^2 = sigma_t^2 d^2 / (sigma_t^2 + d^2)   (Var[x_0 | x_t] for data of std d),

which is exact for isotropic Gaussian data and is the likelihood itself at t -> 0. Any twist
keeps the limit exact; a good one keeps the weights even. For the move from t to s, instead of
TDS's gradient step (a backward pass through the network), D(x_s) is linearized around the
step mean mu with the Gaussian Jacobian c_s = d^2 / (alpha_s (d^2 + sigma_s^2)): G_s is then
Gaussian in A x_s, a pseudo-observation as in MCGdiff (Cardoso et al. 2023) and FPS-SMC (Dou &
Song 2024), and the proposal q(x_s | x_t) ∝ N(x_s; mu, g^2 I) N(b; A x_s, C) is a closed-form
Kalman update with b = A mu + (y - A D(x_t)) / c_s, C = (s^2 I + r_s^2 A A^T) / c_s^2. Weights

    w = [N(x_s; mu, g^2 I) / q(x_s | x_t)] G_s(x_s) / G_t(x_t)
      = N(b; A mu, g^2 A A^T + C) / N(b; A x_s, C) * G_s(x_s) / G_t(x_t)

telescope to p_theta(x_{0:N}) G_eps(x_eps): exact as K -> oo for any step count (up to G_eps's
width std(eps) ~ 0.01), one score evaluation per particle and step, no autograd. Particles are
resampled (systematic) when the effective sample size falls below a fraction of K. Noiseless y
is met exactly: the final denoised particles are projected onto A x = y.

The operator must have a diagonal A A^T in measurement space (``gram_scale``): masks,
colorization, average pooling and orthonormal projections; a blur is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_score.conditioning.guidance import NoisyClassifier, class_labels
from lightning_score.conditioning.operators import LinearOperator
from lightning_score.config import SamplingConfig
from lightning_score.sampling.base import (
    CountingScore,
    SampleResult,
    batch_time,
    chain_step,
    kernel,
    noise_like,
)
from lightning_score.sampling.schedules import time_grid
from lightning_score.sampling.seeding import batch_seed, make_generator
from lightning_score.sde import SDE, ScoreFn

#: the twist's data std when the caller knows none (sigma_data of the configs)
DATA_STD = 0.5
#: resample when the effective sample size falls below this fraction of K (Doucet & Johansen)
ESS_THRESHOLD = 0.5


@dataclass
class ParticleResult:
    """One SMC run per measurement: K weighted particles each.

    ``particles`` (N, K, *data_shape) and normalized ``weights`` (N, K) at the end; ``ess``
    (steps, N): the effective sample size (in particles) before each move; ``resamples``: how
    many times each run resampled; ``nfe``: score evaluations per particle (steps + 1).
    """

    particles: Tensor
    weights: Tensor
    ess: Tensor
    resamples: Tensor
    nfe: int

    def draw(self, generator: torch.Generator | None = None) -> Tensor:
        """One particle per run, drawn by the weights: (N, *data_shape), the posterior sample."""
        pick = torch.multinomial(self.weights.float(), 1, generator=generator)[:, 0]
        return self.particles[torch.arange(self.particles.shape[0], device=pick.device), pick]


@dataclass
class ParticleSamples(SampleResult):
    """Posterior samples (on the CPU), the score evaluations per sample (K x (steps + 1)) and
    the runs' effective sample sizes: ``stats`` holds K, the mean over runs of the smallest and
    of the average ESS (in particles) and of the number of resampling steps."""

    stats: dict[str, float] = field(default_factory=dict)


def _gather(v: Tensor, low: Tensor, idx: Tensor, n: int, k: int) -> Tensor:
    """``v`` (n * k, ...) with the particles of the runs ``low`` replaced by ``idx`` (runs, k)."""
    rows = v.reshape(n, k, -1).clone()
    rows[low] = torch.gather(rows[low], 1, idx[..., None].expand(-1, -1, rows.shape[2]))
    return rows.reshape(v.shape)


def _check_operator(operator: LinearOperator, like: Tensor) -> None:
    try:
        operator.gram_scale(operator(like[:1]))
    except NotImplementedError:
        raise ValueError(
            f"the smc method needs an operator whose A A^T is diagonal (mask, colorization, "
            f"super-resolution, compressive sensing); '{operator.name}' is not: use dps"
        ) from None


def systematic_resample(weights: Tensor, generator: torch.Generator | None) -> Tensor:
    """Indices (N, K) of systematic resampling of each row of normalized ``weights`` (N, K):
    one uniform per row, K evenly spaced points (lowest variance of the standard schemes)."""
    n, k = weights.shape
    u = torch.rand(n, 1, generator=generator, device=weights.device, dtype=weights.dtype)
    points = (u + torch.arange(k, device=weights.device, dtype=weights.dtype)) / k
    cdf = weights.cumsum(1)
    cdf[:, -1] = 1.0  # rounding must not push the last point past the end
    return torch.searchsorted(cdf, points).clamp_max(k - 1)


class _Measurement:
    """Gaussian measurement terms N(b; A x, v I + w A A^T) in measurement space (diagonal)."""

    def __init__(self, operator: LinearOperator, y: Tensor, noise_std: float) -> None:
        self.op, self.y, self.noise_var = operator, y, noise_std**2

    def quad(self, r: Tensor, v: Tensor | float, w: Tensor | float) -> Tensor:
        """r^T (v I + w A A^T)^{-1} r per sample (entries A does not measure count 0)."""
        scales = torch.as_tensor(w, dtype=r.dtype, device=r.device).expand(r.shape[0])
        return (r * self.op.gram_solve(r, float(v), scales)).flatten(1).sum(1)

    def twist(
        self, sde: SDE, x: Tensor, t: float, score: Tensor, data_std: float
    ) -> tuple[Tensor, Tensor]:
        """log G_t(x_t) up to a constant shared by all particles, and D(x_t)."""
        alpha, std = kernel(sde, t, x)
        denoised = (x + std**2 * score) / alpha
        sigma2 = (std / alpha) ** 2
        r2 = sigma2 * data_std**2 / (sigma2 + data_std**2)
        return -0.5 * self.quad(self.y - self.op(denoised), self.noise_var, r2), denoised

    def pseudo(
        self, sde: SDE, mean: Tensor, denoised: Tensor, s: float, data_std: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The linearized twist at s as N(b; A x_s, v I + w A A^T): (b, v, w)."""
        alpha, std = kernel(sde, s, mean)
        sigma2 = (std / alpha) ** 2
        c = data_std**2 / (alpha * (data_std**2 + sigma2))
        r2 = sigma2 * data_std**2 / (sigma2 + data_std**2)
        b = self.op(mean) + (self.y - self.op(denoised)) / c
        return b, self.noise_var / c**2, r2 / c**2

    def propose(
        self, mean: Tensor, var: Tensor, obs: tuple[Tensor, Tensor, Tensor], gen
    ) -> tuple[Tensor, Tensor]:
        """A draw of q ∝ N(x; mean, var I) N(b; A x, v I + w A A^T) by Matheron's rule (a prior
        draw moved by the gain towards a draw of the observation), and log N(x; mean, var I) /
        q(x) up to a constant."""
        b, v, w = obs
        prior = mean + var.sqrt() * noise_like(mean, gen)
        target = b - w.sqrt() * self.op(noise_like(mean, gen))
        if v > 0:
            target = target - v.sqrt() * noise_like(b, gen)
        scales = (var + w).expand(mean.shape[0])
        x = prior + var * self.op.adjoint(
            self.op.gram_solve(target - self.op(prior), float(v), scales)
        )
        log_ratio = -0.5 * self.quad(b - self.op(mean), v, var + w) + 0.5 * self.quad(
            b - self.op(x), v, w
        )
        return x, log_ratio


class Twist(Protocol):
    """What the particle filter needs of a conditioning: its twist and its proposal."""

    def log(self, x: Tensor, t: float, score: Tensor) -> tuple[Tensor, Tensor]:
        """log G_t(x_t) per particle (up to a constant shared by all), and what ``move`` needs
        of x_t (carried through resampling)."""
        ...

    def move(
        self, mean: Tensor, var: Tensor, s: float, aux: Tensor, gen: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """x_s ~ q(x_s | x_t) for the reverse step N(mean, var I), and log N(x_s; mean, var I)
        - log q(x_s | x_t)."""
        ...


def _check_smc(particles: int, ess_threshold: float) -> None:
    if particles < 1:
        raise ValueError(f"the smc method needs at least 1 particle, got {particles}")
    if not 0 <= ess_threshold <= 1:
        raise ValueError(f"the ESS threshold is a fraction of K in [0, 1], got {ess_threshold}")


def twisted_smc(
    score_fn: ScoreFn,
    sde: SDE,
    cfg: SamplingConfig,
    twist: Twist,
    shape: tuple[int, ...],
    *,
    ess_threshold: float = ESS_THRESHOLD,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> ParticleResult:
    """The particle filter: ``shape`` = (N runs, K particles, *data_shape); returns the final
    denoising step D(x_eps) of every particle and its weight within its run."""
    n, k, data_shape = shape[0], shape[1], shape[2:]
    eps = sde.default_eps if cfg.eps is None else cfg.eps
    ts = time_grid(sde, cfg.steps, eps, cfg.schedule, cfg.rho, auto=sde.pc_schedule)
    score = CountingScore(score_fn)
    x = sde.prior_sampling((n * k, *data_shape), generator, device, dtype)
    pending = torch.zeros(n * k, dtype=dtype, device=device)  # log p / q of the last move
    log_w = torch.zeros(n, k, dtype=dtype, device=device)
    ess_trace, resamples = [], torch.zeros(n, dtype=torch.long)
    with torch.no_grad():
        for t, s in pairwise(ts):
            score_t = score(x, batch_time(t, x))
            here, aux = twist.log(x, t, score_t)
            log_w = log_w + (pending + here).view(n, k)
            weights = torch.softmax(log_w, dim=1)
            ess = 1 / weights.pow(2).sum(1)
            ess_trace.append(ess.cpu())
            low = ess < ess_threshold * k
            if bool(low.any()):
                idx = systematic_resample(weights[low], generator)
                x, score_t, here, aux = (
                    _gather(v, low, idx, n, k) for v in (x, score_t, here, aux)
                )
                log_w[low] = 0.0
                resamples += low.cpu()
            a, g2, _, _ = chain_step(sde, t, s, x)
            mean = (2 - a) * x + g2 * score_t  # eq. 46 without its noise
            x, log_ratio = twist.move(mean, g2, s, aux, generator)
            pending = log_ratio - here
        score_eps = score(x, batch_time(ts[-1], x))
        here, _ = twist.log(x, ts[-1], score_eps)
        log_w = log_w + (pending + here).view(n, k)
        alpha, std = kernel(sde, ts[-1], x)
        x0 = (x + std**2 * score_eps) / alpha  # Tweedie's denoiser
    return ParticleResult(
        particles=x0.view(n, k, *data_shape),
        weights=torch.softmax(log_w, dim=1),
        ess=torch.stack(ess_trace),
        resamples=resamples,
        nfe=score.nfe,
    )


class _LinearTwist:
    """The twist and Kalman proposal of y = A x + e (module doc)."""

    def __init__(self, sde: SDE, meas: _Measurement, data_std: float) -> None:
        self.sde, self.meas, self.data_std = sde, meas, data_std

    def log(self, x: Tensor, t: float, score: Tensor) -> tuple[Tensor, Tensor]:
        return self.meas.twist(self.sde, x, t, score, self.data_std)

    def move(self, mean, var, s, aux, gen) -> tuple[Tensor, Tensor]:
        obs = self.meas.pseudo(self.sde, mean, aux, s, self.data_std)
        return self.meas.propose(mean, var, obs, gen)


def smc_sample(
    score_fn: ScoreFn,
    sde: SDE,
    operator: LinearOperator,
    y: Tensor,
    cfg: SamplingConfig,
    *,
    particles: int,
    noise_std: float = 0.0,
    data_std: float = DATA_STD,
    ess_threshold: float = ESS_THRESHOLD,
    generator: torch.Generator | None = None,
) -> ParticleResult:
    """K = ``particles`` weighted particles per measurement in ``y`` (N, ...), on y's device.

    The reverse chain is the reverse-diffusion step (eq. 46) on ``cfg``'s grid (steps,
    schedule, eps); predictor and corrector settings do not apply. ``data_std`` (the model's
    sigma_data) shapes the twist only: any value > 0 keeps the limit exact. The particles are
    the final denoising step D(x_eps), projected onto A x = y when ``noise_std`` is 0.
    """
    _check_smc(particles, ess_threshold)
    if noise_std < 0:
        raise ValueError(f"the measurement noise std must be >= 0, got {noise_std}")
    if not data_std > 0:
        raise ValueError(f"the smc twist needs the data std > 0, got {data_std}")
    n, k = y.shape[0], particles
    ys = y.repeat_interleave(k, dim=0)
    data_shape = tuple(operator.adjoint(ys[:1]).shape[1:])
    _check_operator(operator, ys.new_zeros(1, *data_shape))
    twist = _LinearTwist(sde, _Measurement(operator, ys, noise_std), data_std)
    result = twisted_smc(
        score_fn, sde, cfg, twist, (n, k, *data_shape), ess_threshold=ess_threshold,
        generator=generator, device=y.device, dtype=y.dtype,
    )  # fmt: skip
    if noise_std == 0:
        flat = operator.project(result.particles.flatten(0, 1), ys)
        result.particles = flat.view(n, k, *data_shape)
    return result


class _ClassTwist:
    """TDS for a class: the twist is the noisy classifier's p_t(c | x_t), the proposal the
    classifier-guided step N(mean + var grad log p_t(c | x_t), var I) (Wu et al. 2023)."""

    def __init__(self, classifier: NoisyClassifier, labels: Tensor) -> None:
        self.classifier, self.labels = classifier, labels

    def log(self, x: Tensor, t: float, score: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            logits = self.classifier(x_in, batch_time(t, x_in))
            log_p = F.log_softmax(logits, dim=1).gather(1, self.labels[:, None])[:, 0]
            (grad,) = torch.autograd.grad(log_p.sum(), x_in)
        return log_p.detach().to(x.dtype), grad.to(x.dtype)

    def move(self, mean, var, s, aux, gen) -> tuple[Tensor, Tensor]:
        shift = var * aux
        noise = var.sqrt() * noise_like(mean, gen)
        # log N(x; mean, var) - log N(x; mean + shift, var) at x = mean + shift + noise
        log_ratio = -((shift + noise).pow(2) - noise.pow(2)).flatten(1).sum(1) / (2 * var)
        return mean + shift + noise, log_ratio


def smc_classes(
    score_fn: ScoreFn,
    classifier: NoisyClassifier,
    sde: SDE,
    labels: Tensor,
    num_classes: int,
    data_shape: Sequence[int],
    cfg: SamplingConfig,
    *,
    particles: int,
    ess_threshold: float = ESS_THRESHOLD,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> ParticleResult:
    """K = ``particles`` weighted particles of p(x | c) for each label: the chain conditioned on
    the classifier at eps, exact as K grows when that classifier is p(c | x). One classifier
    forward and backward per particle and step besides the score."""
    _check_smc(particles, ess_threshold)
    wanted = class_labels(labels, num_classes).to(device)
    twist = _ClassTwist(classifier, wanted.repeat_interleave(particles))
    return twisted_smc(
        score_fn, sde, cfg, twist, (wanted.shape[0], particles, *data_shape),
        ess_threshold=ess_threshold, generator=generator, device=device,
    )  # fmt: skip


def smc_solve(
    score_fn: ScoreFn,
    sde: SDE,
    data_shape: Sequence[int],
    operator: LinearOperator,
    y: Tensor,
    cfg: SamplingConfig,
    *,
    particles: int,
    noise_std: float = 0.0,
    data_std: float = DATA_STD,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> ParticleSamples:
    """One posterior sample per row of ``y``, each from its own K-particle run; runs are batched
    so that a batch holds at most ``batch_size`` particles (at least one run)."""
    runs = max(1, batch_size // particles)
    out, ess_min, ess_mean, resamples = [], [], [], []
    nfe = 0
    for b, start in enumerate(range(0, y.shape[0], runs)):
        gen = make_generator(batch_seed(seed, 0, b), device)
        part = y[start : start + runs].to(device)
        result = smc_sample(
            score_fn, sde, operator, part, cfg, particles=particles, noise_std=noise_std,
            data_std=data_std, generator=gen,
        )  # fmt: skip
        out.append(result.draw(gen).cpu())
        ess_min.append(result.ess.min(0).values)
        ess_mean.append(result.ess.mean(0))
        resamples.append(result.resamples.float())
        nfe = result.nfe * particles
    stats = {
        "particles": particles,
        "ess_min": float(torch.cat(ess_min).mean()),
        "ess_mean": float(torch.cat(ess_mean).mean()),
        "resamples": float(torch.cat(resamples).mean()),
    }
    return ParticleSamples(torch.cat(out).reshape(y.shape[0], *data_shape), nfe, stats)


__all__ = [
    "DATA_STD",
    "ESS_THRESHOLD",
    "ParticleResult",
    "ParticleSamples",
    "Twist",
    "smc_classes",
    "smc_sample",
    "smc_solve",
    "systematic_resample",
    "twisted_smc",
]
