"""The seam between a score model on any linear SDE and solvers written over a noise-level grid.

k-diffusion writes every solver as ``sample_x(model, x, sigmas)``: a denoiser D(x, sigma) and a
decreasing grid of sigmas ending at 0. Here x is EDM's scaled state x~ = x / alpha(t) and sigma
= std(t) / alpha(t) (``sde.sigma``), in which every linear SDE's probability-flow ODE reads
dx~/dsigma = (x~ - D) / sigma (Karras et al. 2022, eq. 3-4) and forward noising reads
x~' = x~ + sqrt(sigma'^2 - sigma^2) z. :class:`GridModel` turns ``score_fn(x, t)`` into that D by
Tweedie (one NFE per call) and carries the step hook; :func:`grid_sampler` makes a solver a
``SAMPLERS`` entry. A final sigma of 0 is the final denoising step (``sampling.denoise``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lightning_score.config import SamplingConfig
from lightning_score.sampling.base import BoundHook, batch_time, kernel, no_hook
from lightning_score.sampling.ode import few_step_grid
from lightning_score.sde import SDE, ScoreFn


class GridModel:
    """D(x~, sigma) = x~ + sigma^2 alpha s(alpha x~, t(sigma)) for a score model on ``sde``.

    ``sigmas`` is the solver's grid: sigma(t) on the times ``ts`` (T down to eps), then 0 when
    ``denoise``. Grid sigmas map back to their own t exactly; other sigmas (a restart's
    interval) through ``sde.time_of_sigma``.
    """

    def __init__(
        self,
        score_fn: ScoreFn,
        sde: SDE,
        ts: list[float],
        like: Tensor,
        *,
        denoise: bool = True,
        hook: BoundHook = no_hook,
    ) -> None:
        self.score_fn, self.sde, self.hook = score_fn, sde, hook
        alphas, stds = zip(*(kernel(sde, t, like) for t in ts), strict=True)
        sigmas = torch.stack(stds) / torch.stack(alphas)
        self._times = dict(zip(sigmas.tolist(), ts, strict=True))
        zero = torch.zeros(1, dtype=sigmas.dtype, device=sigmas.device)
        self.sigmas = torch.cat([sigmas, zero]) if denoise else sigmas

    def time(self, sigma: Tensor | float) -> float:
        """The SDE time of noise level ``sigma`` (> 0)."""
        key = float(sigma)
        if key in self._times:
            return self._times[key]
        return float(self.sde.time_of_sigma(torch.tensor([key], dtype=torch.float64)))

    def alpha(self, sigma: Tensor | float, like: Tensor) -> Tensor:
        """alpha(t) at noise level ``sigma``; 1 at sigma = 0 (clean data)."""
        if float(sigma) == 0:
            return torch.ones((), dtype=like.dtype, device=like.device)
        return kernel(self.sde, self.time(sigma), like)[0]

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        """The denoiser D(x~, sigma): one score evaluation."""
        t = self.time(sigma)
        alpha = kernel(self.sde, t, x)[0]
        xt = alpha * x
        return x + sigma**2 * alpha * self.score_fn(xt, batch_time(t, xt))

    def moved(self, x: Tensor, sigma: Tensor) -> Tensor:
        """The step hook on the state x~ after a move to ``sigma`` (none at sigma = 0: ``sample``
        applies it to the result)."""
        if self.hook is no_hook or float(sigma) == 0:
            return x
        alpha = self.alpha(sigma, x)
        return self.hook(alpha * x, self.time(sigma)) / alpha

    def to_model_space(self, x: Tensor) -> Tensor:
        """The solver's final x~ back in model space: alpha x~ at the last grid sigma."""
        return self.alpha(self.sigmas[-1], x) * x


#: a solver over the grid: ``solver(model, x~, sigmas, generator=..., progress=..., **knobs)``
GridSolver = Callable[..., Tensor]
#: the solver's knobs read from the sampling config
Knobs = Callable[[SamplingConfig], dict[str, Any]]


def grid_sampler(solver: GridSolver, knobs: Knobs | None = None) -> Callable[..., Tensor]:
    """A SAMPLERS entry: prior draw, then ``solver`` on the few-step grid with ``knobs(cfg)``."""

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
        model = GridModel(score_fn, sde, ts, x, denoise=cfg.denoise, hook=hook)
        x = x / model.alpha(model.sigmas[0], x)
        options = knobs(cfg) if knobs is not None else {}
        x = solver(model, x, model.sigmas, generator=generator, progress=progress, **options)
        return model.to_model_space(x)

    run.__doc__ = f"Prior sample, then {solver.__name__} on the configured grid."
    return run
