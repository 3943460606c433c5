"""Probability-flow ODE samplers (eq. 13): adaptive (torchdiffeq) and few-step fixed-grid solvers.

The fixed-step solvers integrate the ODE in EDM's variables (Karras et al. 2022): x~ = x / alpha(t)
and sigma = std(t) / alpha(t). Any linear SDE's probability-flow ODE then reads
dx~/dsigma = (x~ - D(x~, sigma)) / sigma (EDM eq. 3-4) with the denoiser D given by Tweedie,
D = x~ + sigma^2 alpha s(alpha x~, t). Euler in these variables is DDIM; it is exact for a
point mass and far more accurate per NFE than Euler in (x, t), which is what 10-50 NFE needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor
from torchdiffeq import odeint

from lightning_score.config import ConfigError, SamplingConfig
from lightning_score.progress import progress_bar
from lightning_score.sampling.base import (
    BoundHook,
    CountingScore,
    SampleResult,
    batch_time,
    kernel,
    no_hook,
    noise_like,
)
from lightning_score.sampling.schedules import time_grid
from lightning_score.sde import SDE, ScoreFn


def _steps(n: int, name: str, progress: bool) -> Iterable[int]:
    """The step indices of a fixed-step solver, with a bar when ``progress``."""
    return progress_bar(range(n), desc=name, unit="step", enabled=progress, leave=False)


#: torchdiffeq's adaptive-step methods (fixed-grid ones need a step size: use euler/heun/dpmpp_2m).
ODE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")

#: why the adaptive solver takes no step hook (projections): it owns its steps, rejects and
#: retries them, and interpolates; changing its state between them breaks its error control.
NO_HOOK_REASON = (
    "sampler 'ode' is torchdiffeq's adaptive solver, whose steps are its own (rejected, retried, "
    "interpolated), so a projection cannot run between them: use a fixed-grid sampler (pc, "
    "euler, heun, dpmpp_2m, edm) or a method that wraps the score (measurement guidance)"
)


def tweedie_denoise(score_fn: ScoreFn, sde: SDE, x: Tensor, t: float) -> Tensor:
    """E[x_0 | x_t] = (x + std(t)^2 s(x, t)) / alpha(t): the final denoising step, one NFE."""
    alpha, std = kernel(sde, t, x)
    return (x + std**2 * score_fn(x, batch_time(t, x))) / alpha


def ode_solve(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    t0: float,
    t1: float,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    progress: bool = False,
) -> Tensor:
    """Integrate the probability-flow ODE from t0 to t1 (either direction) on x's device."""
    flow = sde.reverse(score_fn, probability_flow=True)
    desc = f"ode {method} t={t0:g}->{t1:g}"
    bar = progress_bar(desc=desc, unit="nfe", enabled=progress, leave=False)

    def drift(t: Tensor, y: Tensor) -> Tensor:
        bar.update()
        return flow.sde(y, batch_time(t, y))[0]

    ts = torch.tensor([t0, t1], dtype=x.dtype, device=x.device)
    # step_t makes the last step land on t1: by default torchdiffeq steps past the end and
    # interpolates, which would evaluate the score outside [eps, T] (NaN std for VP at t < 0).
    options = {"step_t": ts[1:]}
    out = odeint(drift, x, ts, rtol=rtol, atol=atol, method=method, options=options)[-1]
    bar.close()
    return out


def ode_sampler(
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    cfg: SamplingConfig,
    *,
    eps: float,
    generator: torch.Generator | None,
    device: torch.device,
    progress: bool,
    hook: BoundHook = no_hook,
) -> Tensor:
    """Adaptive probability-flow ODE from T to eps (RK45 = dopri5 by default), then Tweedie.

    Refuses a step hook (:data:`NO_HOOK_REASON`); guidance, which wraps ``score_fn``, works.
    """
    if hook is not no_hook:
        raise ConfigError(NO_HOOK_REASON)
    x = sde.prior_sampling(shape, generator=generator, device=device)
    x = ode_solve(
        score_fn,
        sde,
        x,
        sde.T,
        eps,
        rtol=cfg.rtol,
        atol=cfg.atol,
        method=cfg.method,
        progress=progress,
    )
    return tweedie_denoise(score_fn, sde, x, eps) if cfg.denoise else x


def _ode_map(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    cfg: SamplingConfig | None,
    forward: bool,
    progress: bool,
) -> SampleResult:
    cfg = cfg or SamplingConfig()
    eps = sde.default_eps if cfg.eps is None else cfg.eps
    t0, t1 = (eps, sde.T) if forward else (sde.T, eps)
    counter = CountingScore(score_fn)
    with torch.no_grad():
        out = ode_solve(
            counter,
            sde,
            x,
            t0,
            t1,
            rtol=cfg.rtol,
            atol=cfg.atol,
            method=cfg.method,
            progress=progress,
        )
    return SampleResult(samples=out, nfe=counter.nfe)


def ode_encode(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    cfg: SamplingConfig | None = None,
    *,
    progress: bool = False,
) -> SampleResult:
    """Data (at time eps, model space) -> latent x_T along the probability-flow ODE."""
    return _ode_map(score_fn, sde, x, cfg, forward=True, progress=progress)


def ode_decode(
    score_fn: ScoreFn,
    sde: SDE,
    z: Tensor,
    cfg: SamplingConfig | None = None,
    *,
    progress: bool = False,
) -> SampleResult:
    """Latent x_T -> data at time eps; no denoising step, so it inverts :func:`ode_encode`."""
    return _ode_map(score_fn, sde, z, cfg, forward=False, progress=progress)


def _edm_grid(sde: SDE, ts: list[float], like: Tensor) -> tuple[Tensor, Tensor]:
    """alpha_i and sigma_i = std_i / alpha_i on the time grid ``ts``."""
    alphas, stds = zip(*(kernel(sde, t, like) for t in ts), strict=True)
    alphas_t = torch.stack(alphas)
    return alphas_t, torch.stack(stds) / alphas_t


def _denoiser(score_fn: ScoreFn, x_tilde: Tensor, t: float, alpha: Tensor, sigma: Tensor) -> Tensor:
    """D(x~, sigma) = x~ + sigma^2 alpha s(alpha x~, t): Tweedie in EDM's scaled variables."""
    x = alpha * x_tilde
    return x_tilde + sigma**2 * alpha * score_fn(x, batch_time(t, x))


def _hooked(hook: BoundHook, x_tilde: Tensor, t: float, alpha: Tensor) -> Tensor:
    """The hook on the model-space state alpha x~ at time t, back in EDM's variables."""
    return hook(alpha * x_tilde, t) / alpha


def _finish(
    score_fn: ScoreFn, x_tilde: Tensor, t: float, alpha: Tensor, sigma: Tensor, denoise: bool
) -> Tensor:
    """Back to model space at the last time, or Tweedie's E[x_0 | x_t] with ``denoise`` (+1 NFE)."""
    return _denoiser(score_fn, x_tilde, t, alpha, sigma) if denoise else alpha * x_tilde


def solve_euler(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    ts: list[float],
    *,
    denoise: bool = True,
    progress: bool = False,
    hook: BoundHook = no_hook,
) -> Tensor:
    """Euler on dx~/dsigma = (x~ - D) / sigma (EDM eq. 3; = DDIM) along ``ts``: one NFE per step."""
    alphas, sigmas = _edm_grid(sde, ts, x)
    x = x / alphas[0]
    for i in _steps(len(ts) - 1, "euler", progress):
        d = (x - _denoiser(score_fn, x, ts[i], alphas[i], sigmas[i])) / sigmas[i]
        x = _hooked(hook, x + (sigmas[i + 1] - sigmas[i]) * d, ts[i + 1], alphas[i + 1])
    return _finish(score_fn, x, ts[-1], alphas[-1], sigmas[-1], denoise)


def solve_heun(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    ts: list[float],
    *,
    denoise: bool = True,
    progress: bool = False,
    hook: BoundHook = no_hook,
) -> Tensor:
    """Heun's 2nd-order method (EDM Alg. 1 without churn) along ``ts``: two NFE per step."""
    alphas, sigmas = _edm_grid(sde, ts, x)
    x = x / alphas[0]
    for i in _steps(len(ts) - 1, "heun", progress):
        h = sigmas[i + 1] - sigmas[i]
        d = (x - _denoiser(score_fn, x, ts[i], alphas[i], sigmas[i])) / sigmas[i]  # Alg. 1 l. 7
        x_next = x + h * d  # l. 8
        denoised = _denoiser(score_fn, x_next, ts[i + 1], alphas[i + 1], sigmas[i + 1])
        d_next = (x_next - denoised) / sigmas[i + 1]  # l. 10
        x = _hooked(hook, x + h * (d + d_next) / 2, ts[i + 1], alphas[i + 1])  # l. 11
    return _finish(score_fn, x, ts[-1], alphas[-1], sigmas[-1], denoise)


def solve_dpmpp_2m(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    ts: list[float],
    *,
    denoise: bool = True,
    progress: bool = False,
    hook: BoundHook = no_hook,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), data prediction, one NFE per step.

    With lambda = -log sigma and h = lambda_{i+1} - lambda_i the exact solution of the linear part
    gives x~_{i+1} = (sigma_{i+1} / sigma_i) x~_i - (e^{-h} - 1) D_hat, where D_hat is D_i on the
    first step and the 2nd-order extrapolation (1 + 1/(2r)) D_i - 1/(2r) D_{i-1},
    r = h_{i-1} / h_i, afterwards.
    """
    alphas, sigmas = _edm_grid(sde, ts, x)
    lambdas = -sigmas.log()
    x = x / alphas[0]
    previous: Tensor | None = None
    for i in _steps(len(ts) - 1, "dpmpp_2m", progress):
        denoised = _denoiser(score_fn, x, ts[i], alphas[i], sigmas[i])
        h = lambdas[i + 1] - lambdas[i]
        d_hat = denoised
        if previous is not None:
            r = (lambdas[i] - lambdas[i - 1]) / h
            d_hat = (1 + 1 / (2 * r)) * denoised - 1 / (2 * r) * previous
        x = sigmas[i + 1] / sigmas[i] * x - torch.expm1(-h) * d_hat
        x = _hooked(hook, x, ts[i + 1], alphas[i + 1])
        previous = denoised
    return _finish(score_fn, x, ts[-1], alphas[-1], sigmas[-1], denoise)


def few_step_grid(sde: SDE, cfg: SamplingConfig, eps: float) -> list[float]:
    """The few-step solvers' grid: ``cfg.schedule`` (``auto``: uniform in log sigma) from T down
    to ``eps``, or, when ``sampling.eps`` is the SDE's default, down to where sigma reaches
    ``sde.few_step_sigma_min``; the final denoising step takes it from there to sigma = 0."""
    if cfg.eps is None and sde.few_step_sigma_min > 0:
        floor = torch.tensor([sde.few_step_sigma_min], dtype=torch.float64)
        eps = min(max(eps, float(sde.time_of_sigma(floor))), sde.T / 2)
    return time_grid(sde, cfg.steps, eps, cfg.schedule, cfg.rho)


def solve_edm_stochastic(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    ts: list[float],
    *,
    churn: float,
    t_min: float,
    t_max: float,
    noise: float,
    generator: torch.Generator | None,
    denoise: bool = True,
    progress: bool = False,
    hook: BoundHook = no_hook,
) -> Tensor:
    """EDM's stochastic sampler (Karras et al. 2022, Alg. 2) along ``ts``: before each Heun step,
    noise is added to raise sigma_i by gamma_i = min(churn / N, sqrt(2) - 1) when sigma_i lies in
    [t_min, t_max] ("churn"); with churn = 0 it is :func:`solve_heun`. N counts EDM's steps: ours
    plus the final one to sigma = 0, which is ``denoise``."""
    alphas, sigmas = _edm_grid(sde, ts, x)
    gamma_max = min(churn / len(ts), math.sqrt(2) - 1)
    x = x / alphas[0]
    for i in _steps(len(ts) - 1, "edm", progress):
        t_hat, alpha_hat, sigma_hat = ts[i], alphas[i], sigmas[i]
        if gamma_max > 0 and t_min <= float(sigmas[i]) <= t_max:
            sigma_hat = sigmas[i] * (1 + gamma_max)  # Alg. 2 l. 5
            t_hat = float(sde.time_of_sigma(sigma_hat.double().reshape(1)))
            alpha_hat = kernel(sde, t_hat, x)[0]
            bump = (sigma_hat**2 - sigmas[i] ** 2).sqrt() * noise  # l. 6
            x = x + bump * noise_like(x, generator)
        h = sigmas[i + 1] - sigma_hat
        d = (x - _denoiser(score_fn, x, t_hat, alpha_hat, sigma_hat)) / sigma_hat  # l. 7
        x_next = x + h * d  # l. 8
        denoised = _denoiser(score_fn, x_next, ts[i + 1], alphas[i + 1], sigmas[i + 1])
        x = x + h * (d + (x_next - denoised) / sigmas[i + 1]) / 2  # l. 10-11
        x = _hooked(hook, x, ts[i + 1], alphas[i + 1])
    return _finish(score_fn, x, ts[-1], alphas[-1], sigmas[-1], denoise)


def edm_sampler(
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    cfg: SamplingConfig,
    *,
    eps: float,
    generator: torch.Generator | None,
    device: torch.device,
    progress: bool,
    hook: BoundHook = no_hook,
) -> Tensor:
    """A SAMPLERS entry: prior draw, then EDM's stochastic sampler with the configured churn."""
    ts = few_step_grid(sde, cfg, eps)
    x = hook(sde.prior_sampling(shape, generator=generator, device=device), ts[0])
    return solve_edm_stochastic(
        score_fn,
        sde,
        x,
        ts,
        churn=cfg.s_churn,
        t_min=cfg.s_tmin,
        t_max=cfg.s_tmax,
        noise=cfg.s_noise,
        generator=generator,
        denoise=cfg.denoise,
        progress=progress,
        hook=hook,
    )


FixedStepSolver = Callable[..., Tensor]


def fixed_step_sampler(solver: FixedStepSolver) -> Callable[..., Tensor]:
    """A SAMPLERS entry: prior draw, then ``solver`` along the configured time grid."""

    def run(
        score_fn: ScoreFn,
        sde: SDE,
        shape: tuple[int, ...],
        cfg: SamplingConfig,
        *,
        eps: float,
        generator: torch.Generator | None,
        device: torch.device,
        progress: bool,
        hook: BoundHook = no_hook,
    ) -> Tensor:
        ts = few_step_grid(sde, cfg, eps)
        x = hook(sde.prior_sampling(shape, generator=generator, device=device), ts[0])
        return solver(score_fn, sde, x, ts, denoise=cfg.denoise, progress=progress, hook=hook)

    run.__doc__ = f"Prior sample, then {solver.__name__} on the configured grid."
    return run
