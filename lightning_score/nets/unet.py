"""A small diffusers UNet2DModel for CPU runs and quick experiments."""

from __future__ import annotations

from collections.abc import Sequence

from diffusers import UNet2DModel
from torch import Tensor, nn

from lightning_score.parameterization import Parameterization
from lightning_score.sde import batch_broadcast


class DiffusersUNet(nn.Module):
    """``net(x, c_noise) -> F`` around diffusers' UNet2DModel.

    With ``time_embedding_type="fourier"`` (score-SDE models) UNet2DModel takes a noise level,
    takes its log itself and divides its output by it. Our rows hand over c_noise = ln sigma
    (ln(sigma) / 4 for EDM), so the UNet gets exp(c_noise) and its division is undone: every
    network here returns the raw F its parameterization expects.
    """

    def __init__(self, unet: UNet2DModel) -> None:
        super().__init__()
        self.unet = unet
        self.fourier = unet.config.time_embedding_type == "fourier"

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        if not self.fourier:
            return self.unet(x, c_noise).sample
        level = c_noise.exp()
        return self.unet(x, level).sample * batch_broadcast(level, x).to(x.dtype)


def small_unet(
    data_shape: Sequence[int],
    param: Parameterization,
    channels: Sequence[int] = (32, 64),
    layers_per_block: int = 1,
    attention: bool = True,
    dropout: float = 0.0,
    norm_num_groups: int = 8,
) -> DiffusersUNet:
    """A UNet with ``len(channels)`` resolutions; attention at the lowest one when ``attention``."""
    c, h, w = data_shape
    n = len(channels)
    down = ["DownBlock2D"] * n
    up = ["UpBlock2D"] * n
    if attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    if param.embedding not in ("fourier", "positional"):
        raise ValueError(f"parameterization '{param.name}' has no noise embedding for a network")
    unet = UNet2DModel(
        sample_size=(h, w),
        in_channels=c,
        out_channels=c,
        block_out_channels=tuple(channels),
        layers_per_block=layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        time_embedding_type=param.embedding,
        norm_num_groups=norm_num_groups,
        dropout=dropout,
        attention_head_dim=None,
    )
    return DiffusersUNet(unet)
