"""Our grid solvers against diffusers' schedulers on a DDPM (VP) model: same samples.

Each solver runs on the scheduler's own noise-level grid (sigma = sqrt((1 - abar) / abar) at its
timesteps, then 0) with a denoiser built from the same epsilon network, from the same x_T and,
where stochastic, the same generator; the samples agree to 1e-4 relative. Settings where
diffusers' conventions differ from a plain call:

* DDIMScheduler clips x_0 to [-1, 1] by default (``clip_sample``): off here, since our solvers
  never clip; ``set_alpha_to_one`` makes its last step go to sigma = 0, like ours.
* DPMSolverMultistepScheduler and UniPCMultistepScheduler lower the order of the last steps
  below 15 steps (``lower_order_final``), as ours do, and step into sigma = 0 at the end
  (``final_sigmas_type="zero"``).
* diffusers' third-order DPM-Solver++ step weights its second divided difference D2 by half
  the exact value (``sample_dpmpp_sde``'s docstring), which makes it second order; ours is
  exact by default and equals theirs with ``reference_d2=True``, the setting compared here.
* diffusers keeps sigmas in float32, so its grid is taken as is rather than recomputed.
* UniPC's bh1 (B(h) = h) into sigma = 0 multiplies h = inf by a zero correction: NaN in
  diffusers 0.42 (ours takes the first-order step x = D there), so bh1 is compared with
  ``final_sigmas_type="sigma_min"``, which ends at the last training sigma instead.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    UNet2DModel,
    UniPCMultistepScheduler,
)
from torch import Tensor

from lightning_score.sampling import sample_ddim, sample_dpmpp_sde, sample_unipc

BETAS = {"beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}
SHAPE = (3, 1, 8, 8)


@pytest.fixture(scope="module")
def unet() -> UNet2DModel:
    torch.manual_seed(0)
    net = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    ).eval()
    with torch.no_grad():  # a nonlinear network whose output moves with x and t
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


class EpsDenoiser:
    """D(x~, sigma) = x~ - sigma eps(alpha x~, t) on a scheduler's grid (alpha = 1/sqrt(1+s^2))."""

    def __init__(self, unet: UNet2DModel, sigmas: Tensor, timesteps: Tensor) -> None:
        self.unet = unet
        self.timestep = dict(zip(sigmas.tolist(), timesteps.tolist(), strict=False))

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        alpha = (1 + sigma**2).rsqrt()
        eps = self.unet(alpha * x, self.timestep[float(sigma)]).sample
        return x - sigma * eps

    def moved(self, x: Tensor, sigma: Tensor) -> Tensor:
        return x


def _diffusers_loop(unet: UNet2DModel, scheduler, x: Tensor, **step_kwargs) -> Tensor:
    for t in scheduler.timesteps:
        x = scheduler.step(unet(x, t).sample, t, x, **step_kwargs).prev_sample
    return x


def _ours(unet, solver, sigmas: Tensor, timesteps: Tensor, x_T: Tensor, **kwargs) -> Tensor:
    model = EpsDenoiser(unet, sigmas, timesteps)
    return solver(model, x_T * (1 + sigmas[0] ** 2).sqrt(), sigmas, **kwargs)


def _close(ours: Tensor, theirs: Tensor) -> None:
    assert torch.isfinite(theirs).all()
    rel = ((ours - theirs).norm() / theirs.norm()).item()
    assert rel < 1e-4, rel


def _x_T() -> Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("steps", "eta"), [(10, 0.0), (10, 1.0), (20, 0.5)])
@torch.no_grad()
def test_ddim_equals_diffusers(unet: UNet2DModel, steps: int, eta: float) -> None:
    scheduler = DDIMScheduler(**BETAS, clip_sample=False, set_alpha_to_one=True)
    scheduler.set_timesteps(steps)
    abar = scheduler.alphas_cumprod[scheduler.timesteps]
    sigmas = torch.cat([((1 - abar) / abar).sqrt(), torch.zeros(1)])
    theirs = _diffusers_loop(
        unet, scheduler, _x_T(), eta=eta, generator=torch.Generator().manual_seed(2)
    )
    gen = torch.Generator().manual_seed(2)
    ours = _ours(unet, sample_ddim, sigmas, scheduler.timesteps, _x_T(), eta=eta, generator=gen)
    _close(ours, theirs)


@pytest.mark.parametrize(
    ("order", "algorithm", "steps"),
    [
        (2, "dpmsolver++", 10),
        (2, "dpmsolver++", 20),
        (3, "dpmsolver++", 10),
        (3, "dpmsolver++", 20),
        (2, "sde-dpmsolver++", 10),
    ],
)
@torch.no_grad()
def test_dpm_solver_pp_equals_diffusers(
    unet: UNet2DModel, order: int, algorithm: str, steps: int
) -> None:
    scheduler = DPMSolverMultistepScheduler(**BETAS, solver_order=order, algorithm_type=algorithm)
    scheduler.set_timesteps(steps)
    stochastic = algorithm.startswith("sde")
    theirs = _diffusers_loop(unet, scheduler, _x_T(), generator=torch.Generator().manual_seed(3))
    ours = _ours(
        unet,
        sample_dpmpp_sde,
        scheduler.sigmas,
        scheduler.timesteps,
        _x_T(),
        order=order,
        eta=1.0 if stochastic else 0.0,
        reference_d2=True,
        generator=torch.Generator().manual_seed(3),
    )
    _close(ours, theirs)


@pytest.mark.parametrize(
    ("order", "variant", "steps", "final"),
    [
        (2, "bh2", 10, "zero"),
        (3, "bh2", 10, "zero"),
        (3, "bh2", 20, "zero"),
        (2, "bh1", 10, "sigma_min"),
        (3, "bh1", 20, "sigma_min"),
    ],
)
@torch.no_grad()
def test_unipc_equals_diffusers(
    unet: UNet2DModel, order: int, variant: str, steps: int, final: str
) -> None:
    scheduler = UniPCMultistepScheduler(
        **BETAS, solver_order=order, solver_type=variant, final_sigmas_type=final
    )
    scheduler.set_timesteps(steps)
    sigmas = scheduler.sigmas
    theirs = _diffusers_loop(unet, scheduler, _x_T())
    ours = _ours(
        unet, sample_unipc, sigmas, scheduler.timesteps, _x_T(), order=order, variant=variant
    )
    # back to diffusers' variables x = alpha x~ at the last sigma (1 at sigma = 0)
    _close(ours * (1 + sigmas[-1] ** 2).rsqrt(), theirs)
