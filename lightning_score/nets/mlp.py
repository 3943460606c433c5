"""A small time-conditional MLP for 2-D toy data."""

from __future__ import annotations

from collections.abc import Sequence

from diffusers.models.embeddings import GaussianFourierProjection, Timesteps
from torch import Tensor, nn

from lightning_score.sde import SDE, VESDE


class ToyMLP(nn.Module):
    """MLP whose hidden layers are shifted by an embedding of the noise level."""

    def __init__(self, dim: int, sde: SDE, hidden: int = 128, depth: int = 3, emb_dim: int = 64):
        super().__init__()
        # VE conditions on sigma: Fourier features of log sigma; VP on (N-1) t: sinusoidal features.
        if isinstance(sde, VESDE):
            self.embed: nn.Module = GaussianFourierProjection(emb_dim // 2, scale=16.0)
        else:
            self.embed = Timesteps(emb_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.emb_mlp = nn.Sequential(
            nn.Linear(emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(depth)
        )
        self.emb_proj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        emb = self.emb_mlp(self.embed(cond.float()).to(x.dtype))
        h = self.inp(x)
        for block, proj in zip(self.blocks, self.emb_proj, strict=True):
            h = h + block(h + proj(emb))
        return self.out(h)


def toy_mlp(data_shape: Sequence[int], sde: SDE, **kwargs: int) -> ToyMLP:
    (dim,) = data_shape
    return ToyMLP(dim, sde, **kwargs)


__all__ = ["ToyMLP", "toy_mlp"]
