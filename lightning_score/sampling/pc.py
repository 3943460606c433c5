"""The predictor-corrector sampler (Song et al. 2021, Alg. 1; Alg. 2-3 for VE and VP)."""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import Tensor

from lightning_score.config import SamplingConfig
from lightning_score.progress import progress_bar
from lightning_score.sampling.base import BoundHook, forward_move, no_hook
from lightning_score.sampling.correctors import CORRECTORS
from lightning_score.sampling.predictors import PREDICTORS
from lightning_score.sampling.schedules import resampling_grid, time_grid
from lightning_score.sde import SDE, ScoreFn


def pc_sampler(
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
    """N steps from T to eps; at each grid time a corrector, then a predictor step to the next time.

    With ``cfg.denoise`` the noise of the last predictor step is left out (the paper's final
    denoising step), which costs no extra score evaluation. ``hook`` sees the state after the
    prior draw and after every move. With RePaint's resampling (``cfg.resample_jump``,
    ``cfg.resample_repeats``) the grid also moves up in time, by the forward kernel.
    """
    predictor = PREDICTORS[cfg.predictor]
    corrector = CORRECTORS[cfg.corrector]
    ts = time_grid(sde, cfg.steps, eps, cfg.schedule, cfg.rho, auto=sde.pc_schedule)
    ts = resampling_grid(ts, cfg.resample_jump, cfg.resample_repeats)
    x = hook(sde.prior_sampling(shape, generator=generator, device=device), ts[0])
    x_mean = x
    desc = f"pc {cfg.predictor}/{cfg.corrector}"
    moves = progress_bar(
        pairwise(ts), total=len(ts) - 1, desc=desc, unit="step", enabled=progress, leave=False
    )
    for t, t_next in moves:
        if t_next > t:  # resampling: back up the forward SDE
            x = x_mean = hook(forward_move(sde, x, t, t_next, generator), t_next)
            continue
        if corrector is not None:
            x, x_mean = corrector(
                sde, score_fn, x, t, t_next, generator, cfg.snr, cfg.corrector_steps
            )
            x = hook(x, t)
        if predictor is not None:
            x, x_mean = predictor(sde, score_fn, x, t, t_next, generator)
            x = hook(x, t_next)
        else:
            # Corrector only: a Langevin step's mean is no denoised sample (dropping its noise
            # shrinks the variance by ~4 snr^2), so there is nothing to denoise, as officially.
            # The next corrector runs at t_next: the hook prepares the state for that time.
            x = x_mean = hook(x, t_next)
    return x_mean if cfg.denoise else x
