"""Turn a noise-conditional network into ``score_fn(x, t)``, asking the SDE for the schedule.

Every network in ``nets/`` has the signature ``net(x, cond) -> Tensor`` where ``cond`` (shape (B,))
is ``sde.network_condition(t)``: sigma(t) for VE, (N - 1) t for VP and sub-VP. This module is the
only place that knows how the network output maps to a score:

* VE (``centered = False``): the network predicts ``sigma * score``; score = out / sigma, unless the
  network already divides by sigma itself (``net.output_divided_by_sigma``, as diffusers'
  Fourier-embedding UNet2DModel does).
* VP / sub-VP: the network predicts the noise epsilon; score = -out / std(t).
"""

from __future__ import annotations

from torch import Tensor, nn

from lightning_score.sde import SDE, VESDE, batch_broadcast


class ScoreModel(nn.Module):
    """A network plus the SDE that gives its time conditioning and output scaling."""

    def __init__(self, net: nn.Module, sde: SDE) -> None:
        super().__init__()
        self.net = net
        self.sde = sde

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """The score s_theta(x, t) = grad_x log p_t(x)."""
        cond = self.sde.network_condition(t)
        out = self.net(x, cond)
        if isinstance(self.sde, VESDE):
            if getattr(self.net, "output_divided_by_sigma", False):
                return out
            return out / batch_broadcast(cond, out)
        std = self.sde.std(t)
        return -out / batch_broadcast(std, out)
