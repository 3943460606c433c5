"""A small diffusers UNet2DModel for CPU runs and quick experiments."""

from __future__ import annotations

from collections.abc import Sequence

from diffusers import UNet2DModel
from torch import Tensor, nn

from lightning_score.sde import SDE, VESDE


class DiffusersUNet(nn.Module):
    """``net(x, cond)`` around diffusers' UNet2DModel.

    VE models use the Fourier embedding of log sigma (Song et al. 2021); UNet2DModel then divides
    its output by sigma itself, which ``output_divided_by_sigma`` tells the score wrapper.
    """

    def __init__(self, unet: UNet2DModel) -> None:
        super().__init__()
        self.unet = unet
        self.output_divided_by_sigma = unet.config.time_embedding_type == "fourier"

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return self.unet(x, cond).sample


def small_unet(
    data_shape: Sequence[int],
    sde: SDE,
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
    unet = UNet2DModel(
        sample_size=(h, w),
        in_channels=c,
        out_channels=c,
        block_out_channels=tuple(channels),
        layers_per_block=layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        time_embedding_type="fourier" if isinstance(sde, VESDE) else "positional",
        norm_num_groups=norm_num_groups,
        dropout=dropout,
        attention_head_dim=None,
    )
    return DiffusersUNet(unet)
