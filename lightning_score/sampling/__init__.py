"""Samplers for score-based models: PC samplers and probability-flow ODE solvers, by name.

``sample(score_fn, sde, shape, cfg)`` is the one entry point; ``score_fn(x, t)`` can be a trained
:class:`~lightning_score.nets.ScoreModel`, a converted checkpoint or an analytic score. Every
sampler reports the number of score evaluations it really made (counted, not computed).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from lightning_score.config import SamplingConfig
from lightning_score.registry import lookup
from lightning_score.sampling.base import CountingScore, SampleResult
from lightning_score.sampling.correctors import CORRECTORS, corrector_unsupported
from lightning_score.sampling.ode import (
    ODE_METHODS,
    fixed_step_sampler,
    ode_decode,
    ode_encode,
    ode_sampler,
    ode_solve,
    solve_dpmpp_2m,
    solve_euler,
    solve_heun,
    tweedie_denoise,
)
from lightning_score.sampling.pc import pc_sampler
from lightning_score.sampling.predictors import PREDICTORS, predictor_unsupported
from lightning_score.sampling.schedules import SCHEDULES, time_grid
from lightning_score.sampling.seeding import batch_seed, make_generator
from lightning_score.sde import SDE, ScoreFn

Sampler = Callable[..., Tensor]

SAMPLERS: dict[str, Sampler] = {
    "pc": pc_sampler,
    "ode": ode_sampler,
    "euler": fixed_step_sampler(solve_euler),
    "heun": fixed_step_sampler(solve_heun),
    "dpmpp_2m": fixed_step_sampler(solve_dpmpp_2m),
}


def check_sampling(sde: SDE, cfg: SamplingConfig) -> None:
    """Raise ValueError with the reason when ``cfg`` cannot sample from ``sde``."""
    lookup(SAMPLERS, cfg.sampler, "sampler")
    lookup(PREDICTORS, cfg.predictor, "predictor")
    lookup(CORRECTORS, cfg.corrector, "corrector")
    lookup(SCHEDULES, cfg.schedule, "time schedule")
    if cfg.steps <= 0:
        raise ValueError(f"sampling steps must be a positive integer, got {cfg.steps}")
    if cfg.snr <= 0:
        raise ValueError(
            f"sampling snr must be > 0 (it sets the Langevin step size), got {cfg.snr}"
        )
    if cfg.corrector != "none" and cfg.corrector_steps <= 0:
        raise ValueError(
            f"corrector_steps must be >= 1 with corrector '{cfg.corrector}', got {cfg.corrector_steps}"
        )
    eps = sde.default_eps if cfg.eps is None else cfg.eps
    if not 0 < eps < sde.T:
        raise ValueError(f"sampling eps must lie in (0, T={sde.T}), got {eps}")
    if cfg.rho <= 0:
        raise ValueError(f"the EDM schedule needs rho > 0, got {cfg.rho}")
    if cfg.sampler == "ode":
        if cfg.method not in ODE_METHODS:
            raise ValueError(
                f"ode method '{cfg.method}' is not an adaptive torchdiffeq method; choose one of: {', '.join(ODE_METHODS)}"
            )
        if cfg.rtol <= 0 or cfg.atol <= 0:
            raise ValueError(f"ode tolerances must be > 0, got rtol={cfg.rtol}, atol={cfg.atol}")
    if cfg.sampler == "pc":
        if cfg.predictor == "none" and cfg.corrector == "none":
            raise ValueError(
                "predictor 'none' with corrector 'none' never moves the prior samples; pick one"
            )
        for reason in (
            predictor_unsupported(cfg.predictor, sde),
            corrector_unsupported(cfg.corrector, sde),
        ):
            if reason:
                raise ValueError(reason)
    elif cfg.corrector != "none":
        raise ValueError(
            f"corrector '{cfg.corrector}' is an MCMC step of the 'pc' sampler; sampler "
            f"'{cfg.sampler}' integrates the probability-flow ODE and cannot use it: set corrector=none"
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
) -> SampleResult:
    """Draw ``shape[0]`` samples with the sampler ``cfg`` names; noise comes from ``generator``.

    Runs under ``torch.no_grad`` (an analytic score that needs autograd must enable it itself).
    ``device`` defaults to the generator's, else the model's, else CPU.
    """
    check_sampling(sde, cfg)
    device = torch.device(device) if device is not None else _default_device(score_fn, generator)
    eps = sde.default_eps if cfg.eps is None else cfg.eps
    counter = CountingScore(score_fn)
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
        )
    return SampleResult(samples=x, nfe=counter.nfe)


__all__ = [
    "CORRECTORS",
    "ODE_METHODS",
    "PREDICTORS",
    "SAMPLERS",
    "SCHEDULES",
    "SampleResult",
    "batch_seed",
    "check_sampling",
    "make_generator",
    "ode_decode",
    "ode_encode",
    "ode_solve",
    "sample",
    "solve_dpmpp_2m",
    "solve_euler",
    "solve_heun",
    "time_grid",
    "tweedie_denoise",
]
