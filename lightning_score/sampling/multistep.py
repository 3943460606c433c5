"""Multistep exponential integrators over a noise-level grid: DPM-Solver++(2M SDE), (3M),
(3M SDE), UniPC and DEIS (:mod:`lightning_score.sampling.grid`: x is EDM's x~, ``model`` the
denoiser D(x~, sigma), one NFE per step).

With lambda = -log sigma (the half log-SNR) and h = lambda' - lambda, the probability-flow ODE's
exact solution is x~' = (sigma' / sigma) x~ + sigma' int_lambda^lambda' e^l D dl (Lu et al. 2022,
eq. 9 in x~ = x / alpha); the solvers differ in how they extrapolate D from earlier steps.
A step into sigma = 0 is x~' = D, the first-order step there; multistep solvers warm up with
lower orders on their first steps and, as DPM-Solver's and UniPC's code do below 15 steps,
lower the order again on the last ones.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from lightning_score.sampling.base import noise_like
from lightning_score.sampling.grid import GridModel
from lightning_score.sampling.ode import _steps

#: below this many steps the final steps use lower orders (DPM-Solver's ``lower_order_final``)
LOWER_ORDER_FINAL_BELOW = 15


def step_order(order: int, i: int, n: int) -> int:
    """The order of step i of n: warm-up (i + 1 values of D known) and lower order at the end
    (the last step first order, the one before at most second) when n < 15."""
    usable = min(order, i + 1)
    if n < LOWER_ORDER_FINAL_BELOW:
        usable = min(usable, n - i)
    return usable


def sample_dpmpp_sde(
    model: GridModel,
    x: Tensor,
    sigmas: Tensor,
    *,
    order: int = 3,
    eta: float = 1.0,
    reference_d2: bool = False,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """DPM-Solver++(2M SDE) and (3M SDE) with noise ``eta``; at eta = 0, (2M) and (3M).

    With h_eta = (1 + eta) h the first-order step is x~' = (sigma' / sigma) e^{-eta h} x~
    + (1 - e^{-h_eta}) D + sigma' sqrt(1 - e^{-2 eta h}) z (eta = 1: the SDE solver of Lu et al.
    2022b, eq. 17 in x~; eta = 0: DPM-Solver++(1) = DDIM). With D1 the divided difference of the
    last two D in lambda, the second order adds 1/2 (1 - e^{-h_eta}) D1 (the midpoint rule of
    Alg. 2: D_hat = D + D1 / 2 on the linear term); the third adds phi_2 D1 - 2 phi_3 D2 with D2
    the second divided difference, phi_2 = 1 + (e^{-h_eta} - 1) / h_eta and
    phi_3 = phi_2 / h_eta - 1/2 (the Taylor terms of the exponential integral).

    The factor 2: D2 = (D1_0 - D1_1) / (r0 + r1) estimates h^2 D'' / 2, while the exact integral
    int_0^h e^{-(h-u)} u^2 / 2 du D'' = -h^2 phi_3 D'' needs -2 phi_3 D2 (check: D = lambda^2 on
    a uniform grid is integrated exactly only with it). DPM-Solver's code, diffusers'
    DPMSolverMultistepScheduler and k-diffusion's 3M SDE use -phi_3 D2, which leaves a local
    error O(h^3): measured, their 3M halves its error per halving of h like a second-order
    method (ratio 0.21-0.23), this one is third order (0.05-0.06; tests/test_grid_solvers.py).
    ``reference_d2`` reproduces theirs (tests/test_samplers_diffusers.py).
    """
    n = len(sigmas) - 1
    history: list[tuple[Tensor, Tensor]] = []  # (D, lambda) of the last two steps, newest first
    for i in _steps(n, f"dpmpp_{order}m_sde", progress):
        denoised = model(x, sigmas[i])
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        lam = -sigma.log()
        if sigma_next == 0:
            x = denoised
        else:
            h = -sigma_next.log() - lam
            h_eta = h * (1 + eta)
            x = sigma_next / sigma * torch.exp(-eta * h) * x - torch.expm1(-h_eta) * denoised
            p = step_order(order, i, n)
            if p >= 2:
                d_prev, lam_prev = history[0]
                d1_0 = (denoised - d_prev) / ((lam - lam_prev) / h)
            if p == 2:
                x = x - 0.5 * torch.expm1(-h_eta) * d1_0
            elif p == 3:
                d_prev2, lam_prev2 = history[1]
                r0, r1 = (lam - lam_prev) / h, (lam_prev - lam_prev2) / h
                d1_1 = (d_prev - d_prev2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = torch.expm1(-h_eta) / h_eta + 1
                d2_weight = 1.0 if reference_d2 else 2.0
                x = x + phi_2 * d1 - d2_weight * (phi_2 / h_eta - 0.5) * d2
            if eta:
                x = x + sigma_next * (-torch.expm1(-2 * eta * h)).sqrt() * noise_like(x, generator)
        history = [(denoised, lam), *history[:1]]
        x = model.moved(x, sigma_next)
    return x


def _unipc_terms(h: Tensor, order: int, variant: str) -> tuple[Tensor, Tensor, Tensor]:
    """h phi_1(h) (in -h), B(h) and the right-hand side g_k = h phi_{k+1}(-h) k! / B(h),
    k = 1..order, of UniPC's order conditions (Zhao et al. 2023, Thm. 3.1 and eq. 9)."""
    hh = -h
    h_phi_1 = torch.expm1(hh)
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    h_phi_k, factorial, rhs = h_phi_1 / hh - 1, 1, []
    for k in range(1, order + 1):
        rhs.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return h_phi_1, b_h, torch.stack(rhs)


def _unipc_update(
    x: Tensor,
    sigma: Tensor,
    sigma_next: Tensor,
    history: list[tuple[Tensor, Tensor]],
    order: int,
    variant: str,
    denoised_next: Tensor | None = None,
) -> Tensor:
    """UniP-p (``denoised_next`` None) or UniC-p (given D at the predicted point) from x~ at
    ``sigma`` to ``sigma_next``; ``history`` holds (D, lambda) at ``sigma`` first, then earlier.

    x~' = (sigma' / sigma) x~ - h phi_1(-h) D_0 - B(h) sum_k a_k D1_k with divided differences
    D1_k = (D_k - D_0) / r_k, r_k = (lambda_k - lambda_0) / h (UniC adds r = 1, the new D), and
    a solving sum_k a_k r_k^{j-1} = g_j. UniP-2 and UniC-1 take a = 1/2, as the authors' code.
    """
    d0, lam0 = history[0]
    h = -sigma_next.log() - lam0
    earlier = history[1:order]
    rks = [(lam - lam0) / h for _, lam in earlier]
    diffs = [(d - d0) / r for (d, _), r in zip(earlier, rks, strict=True)]
    if denoised_next is not None:
        rks.append(torch.ones_like(h))
        diffs.append(denoised_next - d0)
    h_phi_1, b_h, rhs = _unipc_terms(h, order, variant)
    x = sigma_next / sigma * x - h_phi_1 * d0
    if not diffs:
        return x
    if len(diffs) == 1:
        weights = [0.5]
    else:
        k = len(diffs)
        vander = torch.stack([torch.stack(rks) ** j for j in range(k)]).double()
        weights = torch.linalg.solve(vander, rhs[:k].double()).to(x).unbind()
    return x - b_h * sum(w * d for w, d in zip(weights, diffs, strict=True))


def sample_unipc(
    model: GridModel,
    x: Tensor,
    sigmas: Tensor,
    *,
    order: int = 3,
    variant: str = "bh2",
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """UniPC (Zhao et al. 2023, Alg. 2 and 3) with data prediction: UniP-p predicts, and once the
    denoiser is evaluated at the prediction (the next step's one NFE), UniC-p corrects it with
    that value, at no extra NFE. Never after the final step; ``variant`` picks B(h) = h (bh1)
    or e^h - 1 (bh2)."""
    n = len(sigmas) - 1
    history: list[tuple[Tensor, Tensor]] = []
    last: tuple[Tensor, int] | None = None  # x~ before the previous step and that step's order
    for i in _steps(n, f"unipc_{variant}", progress):
        denoised = model(x, sigmas[i])
        if last is not None:  # UniC: correct x~ at sigma_i with D there (Alg. 3)
            x_last, p_last = last
            x = _unipc_update(x_last, sigmas[i - 1], sigmas[i], history, p_last, variant, denoised)
            x = model.moved(x, sigmas[i])
        history = [(denoised, -sigmas[i].log()), *history[: order - 1]]
        p = step_order(order, i, n)
        last = (x, p)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = _unipc_update(x, sigmas[i], sigmas[i + 1], history, p, variant)
        x = model.moved(x, sigmas[i + 1])
    return x


def _deis_weights(model: GridModel, sigmas: Tensor, i: int, p: int) -> list[float]:
    """int_{sigma_i}^{sigma_{i+1}} l_j(t(sigma)) dsigma for the Lagrange basis l_j in the SDE's
    time t through t_i, t_{i-1}, ..., t_{i-p+1} (DEIS's tAB, Zhang & Chen 2023, eq. 14 in x~,
    where the ODE has no linear part); 32-point Gauss-Legendre in sigma (measured: within
    1e-13 relative of 128 points on 4-step grids of every SDE)."""
    nodes, w = np.polynomial.legendre.leggauss(32)
    a, b = float(sigmas[i]), float(sigmas[i + 1])
    s = torch.tensor((b - a) / 2 * nodes + (a + b) / 2, dtype=torch.float64)
    t = model.sde.time_of_sigma(s).numpy()
    knots = [model.time(sigmas[i - j]) for j in range(p)]
    weights = []
    for j in range(p):
        basis = np.ones_like(t)
        for m in range(p):
            if m != j:
                basis *= (t - knots[m]) / (knots[j] - knots[m])
        weights.append(float((b - a) / 2 * (w * basis).sum()))
    return weights


def sample_deis(
    model: GridModel,
    x: Tensor,
    sigmas: Tensor,
    *,
    order: int = 3,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """DEIS tAB-p (Zhang & Chen 2023): Adams-Bashforth on dx~/dsigma = eps~ = (x~ - D) / sigma
    with eps~ extrapolated by a degree p - 1 polynomial in the SDE's time t through the last p
    steps, integrated exactly; lower orders while warming up; into sigma = 0, x~' = D."""
    n = len(sigmas) - 1
    eps_history: list[Tensor] = []
    for i in _steps(n, f"deis_{order}", progress):
        denoised = model(x, sigmas[i])
        eps_history = [(x - denoised) / sigmas[i], *eps_history[: order - 1]]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            p = min(order, i + 1)
            weights = _deis_weights(model, sigmas, i, p)
            x = x + sum(w * e for w, e in zip(weights, eps_history, strict=False))
        x = model.moved(x, sigmas[i + 1])
    return x
