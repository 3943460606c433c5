"""Samplers for score-based models: PC samplers, probability-flow ODE solvers and few-step
grid solvers (DDIM, Euler ancestral, DPM-Solver++ 2M/3M and SDE, UniPC, DEIS, restart), by name.

``sample(score_fn, sde, shape, cfg)`` is the one entry point; ``score_fn(x, t)`` can be a trained
:class:`~lightning_score.nets.ScoreModel`, a converted checkpoint or an analytic score. Every
sampler reports the number of score evaluations it really made (counted, not computed).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from lightning_score.config import ConfigError, SamplingConfig, require
from lightning_score.registry import lookup
from lightning_score.sampling.ancestral import sample_ddim, sample_restart
from lightning_score.sampling.base import (
    CountingScore,
    SampleResult,
    StepHook,
    linear_sde_reason,
    no_hook,
)
from lightning_score.sampling.correctors import CORRECTORS, corrector_unsupported
from lightning_score.sampling.grid import GridModel, grid_sampler
from lightning_score.sampling.multistep import sample_deis, sample_dpmpp_sde, sample_unipc
from lightning_score.sampling.ode import (
    ODE_METHODS,
    edm_sampler,
    fixed_step_sampler,
    ode_decode,
    ode_encode,
    ode_sampler,
    ode_solve,
    solve_dpmpp_2m,
    solve_edm_stochastic,
    solve_euler,
    solve_heun,
    tweedie_denoise,
)
from lightning_score.sampling.pc import pc_sampler
from lightning_score.sampling.predictors import PREDICTORS, predictor_unsupported
from lightning_score.sampling.schedules import AUTO, SCHEDULES, time_grid
from lightning_score.sampling.seeding import batch_seed, make_generator
from lightning_score.sde import SDE, ScoreFn

Sampler = Callable[..., Tensor]

SAMPLERS: dict[str, Sampler] = {
    "pc": pc_sampler,
    "ode": ode_sampler,
    "euler": fixed_step_sampler(solve_euler),
    "heun": fixed_step_sampler(solve_heun),
    "dpmpp_2m": fixed_step_sampler(solve_dpmpp_2m),
    "edm": edm_sampler,
    "ddim": grid_sampler(sample_ddim, lambda c: {"eta": 0.0 if c.eta is None else c.eta}),
    "euler_ancestral": grid_sampler(sample_ddim, lambda c: {"eta": _eta(c)}),
    "dpmpp_2m_sde": grid_sampler(sample_dpmpp_sde, lambda c: {"order": 2, "eta": _eta(c)}),
    "dpmpp_3m": grid_sampler(sample_dpmpp_sde, lambda c: {"order": 3, "eta": 0.0}),
    "dpmpp_3m_sde": grid_sampler(sample_dpmpp_sde, lambda c: {"order": 3, "eta": _eta(c)}),
    "unipc": grid_sampler(sample_unipc, lambda c: {"order": c.order, "variant": c.variant}),
    "deis": grid_sampler(sample_deis, lambda c: {"order": c.order}),
    "restart": grid_sampler(
        sample_restart,
        lambda c: {
            "sigma_min": c.restart_sigma_min,
            "sigma_max": c.restart_sigma_max,
            "steps": c.restart_steps,
            "repeats": c.restart_repeats,
        },
    ),
}
#: the grid solvers (sampling/grid.py) and the knobs each one reads
GRID_SOLVER_KNOBS = {
    "ddim": ("eta",),
    "euler_ancestral": ("eta",),
    "dpmpp_2m_sde": ("eta",),
    "dpmpp_3m": (),
    "dpmpp_3m_sde": ("eta",),
    "unipc": ("order", "variant"),
    "deis": ("order",),
    "restart": ("restart_sigma_min", "restart_sigma_max", "restart_steps", "restart_repeats"),
}
ORDERS = (2, 3)
UNIPC_VARIANTS = ("bh1", "bh2")


def _eta(cfg: SamplingConfig) -> float:
    """The noise of an ancestral or SDE solver: 1 (the papers') unless set."""
    return 1.0 if cfg.eta is None else cfg.eta


def _check_grid_solver(sde: SDE, cfg: SamplingConfig) -> None:
    """The grid solvers' knobs, and the SDEs they run on (linear: they need its kernel)."""
    require(
        sde.linear,
        str(linear_sde_reason(sde, f"sampler '{cfg.sampler}'")),
    )
    if "order" in GRID_SOLVER_KNOBS[cfg.sampler]:
        require(
            cfg.order in ORDERS,
            f"sampling.order {cfg.order} is not an order of '{cfg.sampler}'; valid: "
            f"{', '.join(map(str, ORDERS))}",
        )
    if cfg.sampler == "unipc":
        require(
            cfg.variant in UNIPC_VARIANTS,
            f"sampling.variant '{cfg.variant}' is not a UniPC B(h); valid: "
            f"{', '.join(UNIPC_VARIANTS)}",
        )
    if cfg.sampler == "restart":
        top = float(sde.sigma(torch.tensor([sde.T], dtype=torch.float64)))
        require(
            0 < cfg.restart_sigma_min < cfg.restart_sigma_max < top,
            f"sampling.restart_sigma_min ({cfg.restart_sigma_min}) and restart_sigma_max "
            f"({cfg.restart_sigma_max}) must satisfy 0 < min < max < sigma(T) = {top:.4g}",
        )
        require(
            cfg.restart_steps >= 1 and cfg.restart_repeats >= 0,
            f"sampling.restart_steps must be >= 1 and restart_repeats >= 0, got "
            f"{cfg.restart_steps} and {cfg.restart_repeats}",
        )


def _named(table: dict, name: str, what: str) -> None:
    try:
        lookup(table, name, what)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_sampling(sde: SDE, cfg: SamplingConfig) -> None:
    """Raise a ConfigError naming the ``sampling.*`` key when ``cfg`` cannot sample from ``sde``;
    the one check of a sampling config, at config load and before every sampling run."""
    _named(SAMPLERS, cfg.sampler, "sampling.sampler")
    _named(PREDICTORS, cfg.predictor, "sampling.predictor")
    _named(CORRECTORS, cfg.corrector, "sampling.corrector")
    if cfg.schedule != AUTO:
        _named(SCHEDULES, cfg.schedule, "sampling.schedule")
    require(cfg.steps > 0, f"sampling.steps must be a positive integer, got {cfg.steps}")
    require(
        cfg.snr > 0, f"sampling.snr must be > 0 (it sets the Langevin step size), got {cfg.snr}"
    )
    require(
        cfg.corrector == "none" or cfg.corrector_steps > 0,
        f"sampling.corrector_steps must be >= 1 with corrector '{cfg.corrector}', "
        f"got {cfg.corrector_steps}",
    )
    eps = sde.default_eps if cfg.eps is None else cfg.eps
    require(0 < eps < sde.T, f"sampling.eps must lie in (0, T={sde.T:g}), got {eps}")
    require(cfg.rho > 0, f"sampling.rho (the EDM schedule's) must be > 0, got {cfg.rho}")
    require(cfg.s_churn >= 0, f"sampling.s_churn must be >= 0, got {cfg.s_churn}")
    require(cfg.s_noise > 0, f"sampling.s_noise must be > 0, got {cfg.s_noise}")
    require(
        0 <= cfg.s_tmin <= cfg.s_tmax,
        f"sampling.s_tmin ({cfg.s_tmin}) must lie in [0, sampling.s_tmax ({cfg.s_tmax})]",
    )
    if cfg.sampler == "ode":
        require(
            cfg.method in ODE_METHODS,
            f"sampling.method '{cfg.method}' is not an adaptive torchdiffeq method; choose one "
            f"of: {', '.join(ODE_METHODS)}",
        )
        require(
            cfg.rtol > 0 and cfg.atol > 0,
            f"sampling.rtol and sampling.atol (ode tolerances) must be > 0, got rtol={cfg.rtol}, "
            f"atol={cfg.atol}",
        )
    require(
        cfg.resample_jump >= 0 and cfg.resample_repeats >= 1,
        f"sampling.resample_jump must be >= 0 and sampling.resample_repeats >= 1, got "
        f"{cfg.resample_jump} and {cfg.resample_repeats}",
    )
    resampling = cfg.resample_jump > 0 and cfg.resample_repeats > 1
    require(
        not resampling or cfg.sampler == "pc",
        f"RePaint resampling (sampling.resample_jump, sampling.resample_repeats) alternates "
        f"stochastic reverse steps with forward diffusion; sampler '{cfg.sampler}' integrates the "
        "probability-flow ODE: use sampling.sampler=pc or turn resampling off "
        "(sampling.resample_repeats=1)",
    )
    noisy = [name for name, knobs in GRID_SOLVER_KNOBS.items() if "eta" in knobs]
    require(
        cfg.eta is None or (cfg.sampler in noisy and cfg.eta >= 0),
        f"sampling.eta ({cfg.eta}) must be >= 0 and applies to {', '.join(noisy)} only; "
        f"sampler '{cfg.sampler}' takes none: leave it unset",
    )
    if cfg.sampler in GRID_SOLVER_KNOBS:
        _check_grid_solver(sde, cfg)
    if cfg.sampler == "pc":
        require(
            not (cfg.predictor == "none" and cfg.corrector == "none"),
            "sampling.predictor 'none' with sampling.corrector 'none' never moves the prior "
            "samples; pick one",
        )
        for reason in (
            predictor_unsupported(cfg.predictor, sde),
            corrector_unsupported(cfg.corrector, sde),
        ):
            require(reason is None, str(reason))
    else:
        require(
            cfg.corrector == "none",
            f"sampling.corrector '{cfg.corrector}' is an MCMC step of the 'pc' sampler; sampler "
            f"'{cfg.sampler}' integrates the probability-flow ODE and cannot use it: set "
            "sampling.corrector=none",
        )


def _default_device(score_fn: ScoreFn, generator: torch.Generator | None) -> torch.device:
    if generator is not None:
        return generator.device
    if isinstance(score_fn, nn.Module):
        param = next(score_fn.parameters(), None)
        if param is not None:
            return param.device
    return torch.device("cpu")


def sample(
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...] | torch.Size,
    cfg: SamplingConfig,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    hook: StepHook | None = None,
) -> SampleResult:
    """Draw ``shape[0]`` samples with the sampler ``cfg`` names; noise comes from ``generator``.

    Runs under ``torch.no_grad`` (an analytic score or a guidance term that needs autograd must
    enable it itself). ``device`` defaults to the generator's, else the model's, else CPU.
    Conditioning composes: guidance wraps ``score_fn``; a projection is a ``hook``
    (:class:`~lightning_score.sampling.base.StepHook`) that every fixed-grid sampler calls
    after the prior draw and after each move, and that this function applies to the result.
    """
    check_sampling(sde, cfg)
    device = torch.device(device) if device is not None else _default_device(score_fn, generator)
    eps = sde.default_eps if cfg.eps is None else cfg.eps
    counter = CountingScore(score_fn)
    bound = no_hook if hook is None else lambda x, t: hook(x, t, generator)
    with torch.no_grad():
        x = SAMPLERS[cfg.sampler](
            counter,
            sde,
            tuple(shape),
            cfg,
            eps=eps,
            generator=generator,
            device=device,
            progress=progress,
            hook=bound,
        )
        x = bound(x, None)
    return SampleResult(samples=x, nfe=counter.nfe)


__all__ = [
    "CORRECTORS",
    "GRID_SOLVER_KNOBS",
    "ODE_METHODS",
    "PREDICTORS",
    "SAMPLERS",
    "SCHEDULES",
    "GridModel",
    "SampleResult",
    "StepHook",
    "batch_seed",
    "check_sampling",
    "make_generator",
    "ode_decode",
    "ode_encode",
    "ode_solve",
    "sample",
    "sample_ddim",
    "sample_deis",
    "sample_dpmpp_sde",
    "sample_restart",
    "sample_unipc",
    "solve_dpmpp_2m",
    "solve_edm_stochastic",
    "solve_euler",
    "solve_heun",
    "time_grid",
    "tweedie_denoise",
]
