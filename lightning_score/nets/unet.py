"""diffusers' UNet2DModel as a network: a small one for CPU runs and quick experiments, and any
UNet2DModel given by its diffusers config (models brought from diffusers)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

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

    def __init__(self, unet: UNet2DModel, num_classes: int = 0) -> None:
        super().__init__()
        self.unet = unet
        self.fourier = unet.config.time_embedding_type == "fourier"
        #: labels 0..num_classes - 1; num_classes itself is classifier-free guidance's "no class"
        self.num_classes = num_classes

    def forward(self, x: Tensor, c_noise: Tensor, labels: Tensor | None = None) -> Tensor:
        if not self.fourier:
            return self.unet(x, c_noise, class_labels=labels).sample
        level = c_noise.exp()
        out = self.unet(x, level, class_labels=labels).sample
        return out * batch_broadcast(level, x).to(x.dtype)


def small_unet(
    data_shape: Sequence[int],
    param: Parameterization,
    channels: Sequence[int] = (32, 64),
    layers_per_block: int = 1,
    attention: bool = True,
    dropout: float = 0.0,
    norm_num_groups: int = 8,
    num_classes: int = 0,
) -> DiffusersUNet:
    """A UNet with ``len(channels)`` resolutions; attention at the lowest one when ``attention``;
    with ``num_classes > 0`` UNet2DModel's class embedding (one more row: the null label) is
    added to its time embedding."""
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
        num_class_embeds=num_classes + 1 if num_classes else None,
    )
    return DiffusersUNet(unet, num_classes)


def diffusers_unet2d(
    data_shape: Sequence[int], param: Parameterization, **config: Any
) -> DiffusersUNet:
    """Any UNet2DModel, from the entries of its diffusers ``config.json`` (``model.kwargs``)."""
    accepted = set(inspect.signature(UNet2DModel.__init__).parameters) - {"self"}
    unknown = sorted(set(config) - accepted)
    if unknown:
        raise ValueError(f"model.kwargs has keys {unknown} that UNet2DModel does not take")
    c, h, w = data_shape
    size = config.get("sample_size")
    sizes = (size, size) if isinstance(size, int) else tuple(size or (h, w))
    if config.get("in_channels", 3) != c or sizes != (h, w):
        raise ValueError(
            f"this UNet2DModel takes {config.get('in_channels', 3)}x{sizes[0]}x{sizes[1]} inputs, "
            f"the data are {c}x{h}x{w}: pick the data set (and data.image_size) it was trained on"
        )
    return DiffusersUNet(UNet2DModel(**config))
