"""A small noise-conditional MLP for 2-D toy data."""

from __future__ import annotations

from collections.abc import Sequence

from diffusers.models.embeddings import GaussianFourierProjection, Timesteps
from torch import Tensor, nn

from lightning_score.parameterization import Parameterization


def noise_embedding(kind: str, dim: int) -> nn.Module:
    """diffusers' embedding of ``c_noise``: Fourier features (no log: c_noise is ln sigma already)
    or sinusoidal positions; ``kind`` is the parameterization's ``embedding``."""
    if kind == "fourier":
        return GaussianFourierProjection(dim // 2, scale=16.0, log=False)
    if kind == "positional":
        return Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)
    raise ValueError(f"no network embedding for noise conditioning of kind '{kind}'")


class ToyMLP(nn.Module):
    """MLP whose hidden layers are shifted by an embedding of the noise conditioning."""

    def __init__(
        self,
        dim: int,
        embedding: str,
        hidden: int = 128,
        depth: int = 3,
        emb_dim: int = 64,
        num_classes: int = 0,
    ):
        super().__init__()
        self.embed = noise_embedding(embedding, emb_dim)
        #: labels 0..num_classes - 1 (num_classes: the null label), added to the noise embedding
        self.num_classes = num_classes
        self.label_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.emb_mlp = nn.Sequential(
            nn.Linear(emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(depth)
        )
        self.emb_proj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, c_noise: Tensor, labels: Tensor | None = None) -> Tensor:
        emb = self.embed(c_noise.float())
        if self.label_embed is not None:
            emb = emb + self.label_embed(labels)
        emb = self.emb_mlp(emb.to(x.dtype))
        h = self.inp(x)
        for block, proj in zip(self.blocks, self.emb_proj, strict=True):
            h = h + block(h + proj(emb))
        return self.out(h)


def toy_mlp(
    data_shape: Sequence[int],
    param: Parameterization,
    hidden: int = 128,
    depth: int = 3,
    emb_dim: int = 64,
    num_classes: int = 0,
) -> ToyMLP:
    (dim,) = data_shape
    return ToyMLP(dim, param.embedding, hidden, depth, emb_dim, num_classes)


__all__ = ["ToyMLP", "noise_embedding", "toy_mlp"]
