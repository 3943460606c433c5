"""How a network's output becomes a denoiser and a score: one object per formulation.

Following EDM's Table 1 (Karras et al. 2022), every formulation is a row of formulas around the raw
network F, written here in the model's own variables x_t = alpha(t) x_0 + std(t) z:

    D(x_t, t) = c_skip(t) x_t + c_out(t) F(c_in(t) x_t, c_noise(t))     (EDM eq. 7; D estimates x_0)
    score(x_t, t) = (alpha D - x_t) / std^2                             (Tweedie)

and training regresses F onto the target F* = (x_0 - c_skip x_t) / c_out (EDM eq. 8), so that
||s - grad log p_0t||^2 = (alpha c_out / std^2)^2 ||F - F*||^2. Each row below states its c's and,
where it has one, a cancellation-free closed form of the score and the target (the Song rows
reproduce the official code's arithmetic that way).

| row | network predicts | c_in | c_out | c_skip | c_noise | embedding |
| --- | --- | --- | --- | --- | --- | --- |
| ``ve`` (Song VE, NCSN) | std * score = -z | 1 | std / alpha | 1 / alpha | ln std | Fourier |
| ``vp`` (Song VP / sub-VP, DDPM) | noise z | 1 | -std / alpha | 1 / alpha | (N - 1) t | positional |
| ``edm`` | EDM's preconditioned F | 1 / (alpha sqrt(sigma^2 + sd^2)) | sigma sd / sqrt(sigma^2 + sd^2) | sd^2 / (alpha (sigma^2 + sd^2)) | ln(sigma) / 4 | positional |
| ``score`` (analytic scores) | the score | 1 | std^2 / alpha | 1 / alpha | t | none |

with sigma = std / alpha (EDM's noise level) and sd = sigma_data. Each row also names its training recipe (EDM's
Table 1 lists it per row too): the sigma^2 weighting on uniform t for Song's rows, EDM's
lambda(sigma) on log-normal sigma for EDM's. Nothing outside this module knows which row a model uses: networks embed ``c_noise`` with the row's ``embedding`` unless told
otherwise, the loss asks for the target and the scale, samplers see only ``score``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from lightning_score.registry import lookup
from lightning_score.sde import SDE, batch_broadcast


class Parameterization:
    """One formulation on one SDE: the c's of EDM's Table 1 and what follows from them."""

    name: ClassVar[str]
    #: how a network built for this row embeds ``c_noise`` unless its config says otherwise.
    embedding: ClassVar[str]
    #: the row's training recipe (``loss.weighting=auto``, ``loss.time_sampler=auto``)
    default_weighting: ClassVar[str] = "sigma2"
    default_time_sampler: ClassVar[str] = "uniform"

    def __init__(self, sde: SDE, sigma_data: float = 0.5) -> None:
        if sigma_data <= 0:
            raise ValueError(f"model.sigma_data must be > 0, got {sigma_data}")
        self.sde = sde
        #: the data std; EDM's row and its loss weighting use it
        self.sigma_data = float(sigma_data)

    # -- the row (per-sample, shape (B,)) ------------------------------------------------------
    def c_in(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def c_out(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def c_skip(self, t: Tensor) -> Tensor:
        return 1.0 / self.sde.alpha(t)

    def c_noise(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    # -- what follows ----------------------------------------------------------------------
    def denoise(self, x: Tensor, t: Tensor, out: Tensor) -> Tensor:
        """D = c_skip x + c_out F: the estimate of x_0 (EDM eq. 7)."""
        return batch_broadcast(self.c_skip(t), x) * x + batch_broadcast(self.c_out(t), out) * out

    def score(self, x: Tensor, t: Tensor, out: Tensor) -> Tensor:
        """grad log p_t(x) = (alpha D - x) / std^2."""
        alpha, std = self.sde.alpha(t), self.sde.std(t)
        d = self.denoise(x, t, out)
        return (batch_broadcast(alpha, x) * d - x) / batch_broadcast(std**2, x)

    def target(self, x0: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """F* = (x_0 - c_skip x_t) / c_out for x_t = alpha x_0 + std z."""
        alpha, std = self.sde.alpha(t), self.sde.std(t)
        x_t = batch_broadcast(alpha, x0) * x0 + batch_broadcast(std, z) * z
        return (x0 - batch_broadcast(self.c_skip(t), x0) * x_t) / batch_broadcast(self.c_out(t), x0)

    def score_scale(self, t: Tensor) -> Tensor:
        """alpha c_out / std^2: the score error per unit error of F (the loss weights by its square)."""
        return self.sde.alpha(t) * self.c_out(t) / self.sde.std(t) ** 2


class VEParameterization(Parameterization):
    """Song's VE row: F estimates std * score (= -z); conditioned on ln std (Fourier features)."""

    name = "ve"
    embedding = "fourier"

    def c_out(self, t: Tensor) -> Tensor:
        return self.sde.std(t) / self.sde.alpha(t)

    def c_noise(self, t: Tensor) -> Tensor:
        return torch.log(self.sde.std(t))

    def score(self, x: Tensor, t: Tensor, out: Tensor) -> Tensor:
        return out / batch_broadcast(self.sde.std(t), out)

    def target(self, x0: Tensor, z: Tensor, t: Tensor) -> Tensor:
        return -z


class VPParameterization(Parameterization):
    """Song's VP / sub-VP row (DDPM's epsilon prediction): F estimates z; conditioned on the
    DDPM timestep (N - 1) t (positional embedding)."""

    name = "vp"
    embedding = "positional"

    def c_out(self, t: Tensor) -> Tensor:
        return -self.sde.std(t) / self.sde.alpha(t)

    def c_noise(self, t: Tensor) -> Tensor:
        return t * (self.sde.N - 1)

    def score(self, x: Tensor, t: Tensor, out: Tensor) -> Tensor:
        return -out / batch_broadcast(self.sde.std(t), out)

    def target(self, x0: Tensor, z: Tensor, t: Tensor) -> Tensor:
        return z


class EDMParameterization(Parameterization):
    """EDM's preconditioning (Table 1, right column; eq. 7) with data std ``sigma_data``, in the
    variables x~ = x / alpha of any linear SDE (alpha = 1 on EDM's own schedule)."""

    name = "edm"
    embedding = "positional"
    default_weighting = "edm"
    default_time_sampler = "lognormal"

    def _norm(self, t: Tensor) -> Tensor:
        """sqrt(sigma^2 + sigma_data^2)."""
        return torch.sqrt(self.sde.sigma(t) ** 2 + self.sigma_data**2)

    def c_in(self, t: Tensor) -> Tensor:
        return 1.0 / (self.sde.alpha(t) * self._norm(t))

    def c_out(self, t: Tensor) -> Tensor:
        return self.sde.sigma(t) * self.sigma_data / self._norm(t)

    def c_skip(self, t: Tensor) -> Tensor:
        return self.sigma_data**2 / (self.sde.alpha(t) * self._norm(t) ** 2)

    def c_noise(self, t: Tensor) -> Tensor:
        return torch.log(self.sde.sigma(t)) / 4

    def target(self, x0: Tensor, z: Tensor, t: Tensor) -> Tensor:
        # (x_0 - c_skip x_t) / c_out with alpha x~ = x_t, simplified: (sigma x_0 - sd^2 z) / (sd n)
        sigma = batch_broadcast(self.sde.sigma(t), x0)
        norm = batch_broadcast(self._norm(t), x0)
        return (sigma * x0 - self.sigma_data**2 * z) / (self.sigma_data * norm)


class ScoreParameterization(Parameterization):
    """The network *is* the score (analytic scores of known distributions): F(x, t) = score."""

    name = "score"
    embedding = "none"

    def c_out(self, t: Tensor) -> Tensor:
        return self.sde.std(t) ** 2 / self.sde.alpha(t)

    def c_noise(self, t: Tensor) -> Tensor:
        return t

    def score(self, x: Tensor, t: Tensor, out: Tensor) -> Tensor:
        return out

    def target(self, x0: Tensor, z: Tensor, t: Tensor) -> Tensor:
        return -z / batch_broadcast(self.sde.std(t), z)


PARAMETERIZATIONS: dict[str, type[Parameterization]] = {
    p.name: p
    for p in (VEParameterization, VPParameterization, EDMParameterization, ScoreParameterization)
}


def build_parameterization(name: str, sde: SDE, sigma_data: float = 0.5) -> Parameterization:
    """Row ``name`` ("auto": the SDE's default) on ``sde``; ``sigma_data`` only matters for EDM."""
    name = sde.default_parameterization if name == "auto" else name
    return lookup(PARAMETERIZATIONS, name, "parameterization")(sde, sigma_data)


__all__ = [
    "PARAMETERIZATIONS",
    "EDMParameterization",
    "Parameterization",
    "ScoreParameterization",
    "VEParameterization",
    "VPParameterization",
    "build_parameterization",
]
