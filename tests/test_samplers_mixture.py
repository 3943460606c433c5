"""Every sampler on a 2-component Gaussian mixture with its exact score: weights and components.

Data: 0.3 N(mu_0, 0.35^2 I) + 0.7 N(mu_1, 0.5^2 I) in 2-D, the means 6.5 (pooled) stds apart, so
assigning a sample to the component with the larger responsibility misclassifies with
probability < 1e-6. Tolerances, with n samples (n_k in component k):

* weight of component 0: binomial SE sqrt(w (1 - w) / n); we allow 4.5 SE plus 0.02 for
  discretization (measured |bias| <= 0.017 at N = 200 steps with n = 3000, within noise);
* per component, the mean per coordinate (SE s_k / sqrt(n_k)) and the variance averaged over the
  2 coordinates (SE s_k^2 / sqrt(n_k)) within 4.5 SE plus the same C / N discretization allowance
  as the Gaussian tests (test_samplers_gaussian.py), and Langevin's known (1 + snr^2) variance.
"""

from __future__ import annotations

import math

import pytest
import torch

from lightning_score.config import SamplingConfig
from lightning_score.sampling import CORRECTORS, PREDICTORS, make_generator, sample
from lightning_score.sampling.analytic import gaussian_mixture_score
from lightning_score.sde import VESDE, VPSDE, SubVPSDE

SDES = {"ve": lambda: VESDE(sigma_max=50.0), "vp": VPSDE, "subvp": SubVPSDE}
WEIGHTS = (0.3, 0.7)
MEANS = torch.tensor([[1.5, 1.0], [-1.0, -1.5]])
STDS = (0.35, 0.5)
N_SAMPLES = 2000
STEPS = 200


def assert_mixture(x: torch.Tensor, steps: int, var_factor: float = 1.0) -> None:
    n = x.shape[0]
    logits = -torch.cdist(x, MEANS).pow(2) / (2 * torch.tensor(STDS) ** 2)
    logits = logits + torch.log(torch.tensor(WEIGHTS)) - 2 * torch.log(torch.tensor(STDS))
    label = logits.argmax(1)
    w0 = (label == 0).float().mean().item()
    w_tol = 4.5 * math.sqrt(WEIGHTS[0] * WEIGHTS[1] / n) + 0.02
    assert abs(w0 - WEIGHTS[0]) <= w_tol, f"weight {w0:.3f} vs {WEIGHTS[0]} (tolerance {w_tol:.3f})"
    for k in range(2):
        xs = x[label == k]
        nk, s = xs.shape[0], STDS[k]
        mean_err = ((xs.mean(0) - MEANS[k]).abs().max() / s).item()
        assert mean_err <= 4.5 / math.sqrt(nk) + 3 / steps, (
            f"component {k} mean off by {mean_err:.3f} s"
        )
        var_err = abs(xs.var(0).mean().item() / (s**2 * var_factor) - 1)
        assert var_err <= 4.5 / math.sqrt(nk) + 10 / steps, (
            f"component {k} variance off by {var_err:.3f}"
        )


def _combos() -> list[tuple[str, str, str]]:
    # ALD alone on VP / sub-VP freezes before t -> 0 (see test_samplers_gaussian._pc_combos).
    return [
        (p, c, sde)
        for sde in SDES
        for p in PREDICTORS
        for c in CORRECTORS
        if not (p == "none" and c == "none") and not (p == "none" and c == "ald" and sde != "ve")
    ]


@pytest.mark.parametrize(("predictor", "corrector", "sde_name"), _combos())
def test_pc_sampler_recovers_mixture(predictor: str, corrector: str, sde_name: str) -> None:
    sde = SDES[sde_name]()
    corrector_only = predictor == "none"
    # Corrector-only sampling needs more steps (test_samplers_gaussian); ALD alone a larger snr.
    steps = 1000 if corrector_only else STEPS
    snr = 0.5 if corrector_only and corrector == "ald" else 0.16
    cfg = SamplingConfig(predictor=predictor, corrector=corrector, steps=steps, snr=snr)
    score = gaussian_mixture_score(sde, WEIGHTS, MEANS, STDS)
    x = sample(score, sde, (N_SAMPLES, 2), cfg, generator=make_generator(11)).samples
    assert_mixture(x, steps, var_factor=1 + snr**2 if corrector == "langevin" else 1.0)


@pytest.mark.parametrize("sde_name", SDES)
@pytest.mark.parametrize(
    "cfg",
    [
        SamplingConfig(sampler="ode"),
        SamplingConfig(sampler="euler", steps=250, schedule="edm"),
        SamplingConfig(sampler="heun", steps=40, schedule="edm"),
        SamplingConfig(sampler="dpmpp_2m", steps=40, schedule="log_sigma"),
    ],
    ids=["ode", "euler", "heun", "dpmpp_2m"],
)
def test_ode_samplers_recover_mixture(sde_name: str, cfg: SamplingConfig) -> None:
    sde = SDES[sde_name]()
    score = gaussian_mixture_score(sde, WEIGHTS, MEANS, STDS)
    x = sample(score, sde, (N_SAMPLES, 2), cfg, generator=make_generator(12)).samples
    assert_mixture(x, steps=250)
