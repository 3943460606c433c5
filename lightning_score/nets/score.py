"""Turn a noise-conditional network into ``score_fn(x, t)`` through a parameterization.

Every network in ``nets/`` has the signature ``net(x, c_noise) -> F`` and knows nothing about
SDEs: the :class:`~lightning_score.parameterization.Parameterization` scales its input (c_in), gives
its conditioning (c_noise) and maps its raw output F to a denoiser and a score.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from lightning_score.parameterization import Parameterization, ScoreParameterization
from lightning_score.sde import SDE, ScoreFn, batch_broadcast


class ScoreModel(nn.Module):
    """A network plus the parameterization (and through it the SDE) it was trained under."""

    def __init__(
        self, net: nn.Module | Callable[[Tensor, Tensor], Tensor], param: Parameterization
    ):
        super().__init__()
        self.net = net
        self.param = param

    @property
    def sde(self) -> SDE:
        return self.param.sde

    @classmethod
    def from_score_fn(cls, score_fn: ScoreFn, sde: SDE) -> ScoreModel:
        """An analytic ``score_fn(x, t)`` as a model (the ``score`` row: F is the score)."""
        return cls(score_fn, ScoreParameterization(sde))

    @property
    def num_classes(self) -> int:
        """Classes of a class-conditional network (0: unconditional); label ``num_classes`` is
        "no class", the unconditional score of classifier-free guidance."""
        return int(getattr(self.net, "num_classes", 0))

    def network(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        """The raw output F(c_in x, c_noise[, labels]) that training regresses onto the row's
        target; a class-conditional network without ``labels`` gets the "no class" label."""
        inputs = (batch_broadcast(self.param.c_in(t), x) * x, self.param.c_noise(t))
        if not self.num_classes:
            if labels is not None:
                raise ValueError(
                    "class labels were given to an unconditional model (model.num_classes=0): "
                    "train with model.num_classes > 0, or guide with a noisy classifier instead"
                )
            return self.net(*inputs)
        if labels is None:
            labels = torch.full((x.shape[0],), self.num_classes, device=x.device)
        return self.net(*inputs, labels)

    def denoise(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        """D(x, t), the estimate of x_0 (EDM's denoiser)."""
        return self.param.denoise(x, t, self.network(x, t, labels))

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        """The score s_theta(x, t) = grad_x log p_t(x), or grad_x log p_t(x | label)."""
        return self.param.score(x, t, self.network(x, t, labels))
