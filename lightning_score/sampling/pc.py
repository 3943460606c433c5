"""The predictor-corrector sampler (Song et al. 2021, Alg. 1; Alg. 2-3 for VE and VP)."""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import trange

from lightning_score.config import SamplingConfig
from lightning_score.sampling.correctors import CORRECTORS
from lightning_score.sampling.predictors import PREDICTORS
from lightning_score.sampling.schedules import time_grid
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
) -> Tensor:
    """N steps from T to eps; at each grid time a corrector, then a predictor step to the next time.

    With ``cfg.denoise`` the noise of the last predictor step is left out (the paper's final
    denoising step), which costs no extra score evaluation.
    """
    predictor = PREDICTORS[cfg.predictor]
    corrector = CORRECTORS[cfg.corrector]
    ts = time_grid(sde, cfg.steps, eps, cfg.schedule, cfg.rho, auto=sde.pc_schedule)
    x = sde.prior_sampling(shape, generator=generator, device=device)
    x_mean = x
    for i in trange(cfg.steps, disable=not progress, desc=f"pc {cfg.predictor}/{cfg.corrector}"):
        t, t_next = ts[i], ts[i + 1]
        if corrector is not None:
            x, x_mean = corrector(
                sde, score_fn, x, t, t_next, generator, cfg.snr, cfg.corrector_steps
            )
        if predictor is not None:
            x, x_mean = predictor(sde, score_fn, x, t, t_next, generator)
        else:
            # Corrector only: a Langevin step's mean is no denoised sample (dropping its noise
            # shrinks the variance by ~4 snr^2), so there is nothing to denoise, as officially.
            x_mean = x
    return x_mean if cfg.denoise else x
