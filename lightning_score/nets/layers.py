"""Building blocks of NCSN++ / DDPM++ (Song et al. 2021, appendix H): DDPM initialization,
noise-level embeddings, residual and attention blocks, resampling layers.

Each block names its children as the official ``layerspp`` / ``layers`` modules do in
``official_names`` (and marks official ``NIN`` layers in ``official_nin``), so that
``nets/official_layout.py`` can map state dicts both ways.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_score.nets.fir import FIRConv2d, downsample_2d, fir_filter, upsample_2d

INV_SQRT2 = 1.0 / math.sqrt(2.0)


# -- initialization --------------------------------------------------------------------------
def ddpm_init_(weight: Tensor, scale: float = 1.0) -> Tensor:
    """DDPM's initializer: variance scaling, fan_avg, uniform. A scale of 0 means 1e-10.

    Zero-scaled layers (last conv of each residual block, attention output) start each block
    as the identity, which the paper's models rely on for stable early training.
    """
    scale = 1e-10 if scale == 0 else scale
    receptive = weight[0, 0].numel() if weight.dim() > 2 else 1
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    bound = math.sqrt(3.0 * scale / ((fan_in + fan_out) / 2))
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def conv2d(in_ch: int, out_ch: int, kernel_size: int = 3, init_scale: float = 1.0) -> nn.Conv2d:
    """A same-padded convolution with DDPM initialization and zero bias."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)
    ddpm_init_(conv.weight, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def linear(in_dim: int, out_dim: int) -> nn.Linear:
    layer = nn.Linear(in_dim, out_dim)
    ddpm_init_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with min(C/4, 32) groups, eps 1e-6, as in the official code."""
    return nn.GroupNorm(min(channels // 4, 32), channels, eps=1e-6)


# -- noise-level embeddings ------------------------------------------------------------------
class FourierEmbedding(nn.Module):
    """Random Fourier features [sin(2 pi W c), cos(2 pi W c)] of the noise conditioning c
    (Tancik et al. 2020): for Song's VE row c = ln sigma, for EDM's ln(sigma) / 4.

    ``W`` is a frozen parameter (not a buffer) as in the official model, so parameter counts and
    state-dict keys match; it never trains.
    """

    def __init__(self, size: int, scale: float) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(size) * scale, requires_grad=False)

    def forward(self, c_noise: Tensor) -> Tensor:
        # The official operation order (c W 2 pi), so converted checkpoints agree bit for bit.
        # At least float32: sin/cos of arguments in the hundreds are meaningless in bf16.
        dtype = torch.promote_types(c_noise.dtype, torch.float32)
        proj = c_noise.to(dtype)[:, None] * self.W.to(dtype)[None, :] * 2 * math.pi
        return torch.cat([proj.sin(), proj.cos()], dim=1)


def positional_embedding(timesteps: Tensor, dim: int, max_positions: int = 10000) -> Tensor:
    """Transformer sinusoidal embedding of the noise conditioning (Ho et al. 2020): the
    continuous DDPM timestep for Song's VP row, ln(sigma) / 4 for EDM's."""
    half = dim // 2
    freqs = torch.exp(
        torch.arange(half, device=timesteps.device, dtype=torch.float32)
        * (-math.log(max_positions) / (half - 1))
    )
    args = timesteps.float()[:, None] * freqs[None, :]
    emb = torch.cat([args.sin(), args.cos()], dim=1)
    return F.pad(emb, (0, dim % 2))


# -- blocks ----------------------------------------------------------------------------------
class ResBlock(nn.Module):
    """Residual block, DDPM style or BigGAN style (the latter can resample), with time conditioning.

    ``kind='ddpm'``: shortcut is a 1x1 projection when channels change (official ``NIN_0``).
    ``kind='biggan'``: resamples both paths when ``up``/``down``; the shortcut is a 1x1 conv when
    channels change or it resamples (official ``Conv_2``). ``skip_rescale`` divides the sum by
    sqrt(2) (appendix H).
    """

    def __init__(
        self,
        kind: str,
        in_ch: int,
        out_ch: int | None,
        temb_dim: int,
        dropout: float,
        skip_rescale: bool,
        init_scale: float,
        up: bool = False,
        down: bool = False,
        fir: bool = False,
        fir_kernel: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        self.norm0 = group_norm(in_ch)
        self.conv0 = conv2d(in_ch, out_ch)
        self.temb_proj = linear(temb_dim, out_ch)
        self.norm1 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = conv2d(out_ch, out_ch, init_scale=init_scale)
        self.official_names = {
            "norm0": "GroupNorm_0",
            "conv0": "Conv_0",
            "temb_proj": "Dense_0",
            "norm1": "GroupNorm_1",
            "conv1": "Conv_1",
        }
        self.official_nin: set[str] = set()
        self.shortcut: nn.Module | None = None
        if kind == "ddpm" and in_ch != out_ch:
            self.shortcut = conv2d(in_ch, out_ch, kernel_size=1, init_scale=0.1)
            self.official_names["shortcut"] = "NIN_0"
            self.official_nin.add("shortcut")
        elif kind == "biggan" and (in_ch != out_ch or up or down):
            self.shortcut = conv2d(in_ch, out_ch, kernel_size=1)
            self.official_names["shortcut"] = "Conv_2"
        self.up, self.down, self.fir = up, down, fir
        self.skip_rescale = skip_rescale
        if up or down:
            self.register_buffer("fir_kernel", fir_filter(fir_kernel), persistent=False)

    def _resample(self, x: Tensor) -> Tensor:
        if self.up:
            return (
                upsample_2d(x, self.fir_kernel) if self.fir else F.interpolate(x, scale_factor=2.0)
            )
        if self.down:
            return downsample_2d(x, self.fir_kernel) if self.fir else F.avg_pool2d(x, 2)
        return x

    def forward(self, x: Tensor, temb: Tensor | None) -> Tensor:
        h = F.silu(self.norm0(x))
        h = self.conv0(self._resample(h))
        x = self._resample(x)
        if temb is not None:
            h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        if self.shortcut is not None:
            x = self.shortcut(x)
        return (x + h) * INV_SQRT2 if self.skip_rescale else x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels (DDPM), through fused SDPA kernels."""

    def __init__(self, channels: int, skip_rescale: bool, init_scale: float) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.q = conv2d(channels, channels, kernel_size=1, init_scale=0.1)
        self.k = conv2d(channels, channels, kernel_size=1, init_scale=0.1)
        self.v = conv2d(channels, channels, kernel_size=1, init_scale=0.1)
        self.proj = conv2d(channels, channels, kernel_size=1, init_scale=init_scale)
        self.skip_rescale = skip_rescale
        self.official_names = {
            "norm": "GroupNorm_0",
            "q": "NIN_0",
            "k": "NIN_1",
            "v": "NIN_2",
            "proj": "NIN_3",
        }
        self.official_nin = {"q", "k", "v", "proj"}

    def forward(self, x: Tensor) -> Tensor:
        b, c, height, width = x.shape
        h = self.norm(x)
        # (B, C, H, W) -> (B, 1, HW, C): one head of width C; SDPA scales by C^-1/2.
        q, k, v = (m(h).flatten(2).transpose(1, 2)[:, None] for m in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)[:, 0]
        h = self.proj(h.transpose(1, 2).reshape(b, c, height, width))
        return (x + h) * INV_SQRT2 if self.skip_rescale else x + h


class Resample(nn.Module):
    """Up- or down-sampling by 2, optionally with a (possibly FIR-fused) 3x3 convolution.

    Without ``fir``: nearest upsampling then conv, or a stride-2 conv on the bottom/right-padded
    input ('SAME' padding as in TensorFlow) / 2x2 average pooling. With ``fir``: FIR resampling,
    fused with the conv when ``with_conv``.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None,
        up: bool,
        with_conv: bool,
        fir: bool,
        fir_kernel: Sequence[float],
    ) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        self.up, self.fir = up, fir
        self.conv: nn.Module | None = None
        if with_conv and fir:
            self.conv = FIRConv2d(in_ch, out_ch, 3, up=up, down=not up, fir_kernel=fir_kernel)
            ddpm_init_(self.conv.weight)
            self.official_names = {"conv": "Conv2d_0"}
        elif with_conv:
            self.conv = conv2d(in_ch, out_ch)
            if not up:
                self.conv.padding = (0, 0)
                self.conv.stride = (2, 2)
            self.official_names = {"conv": "Conv_0"}
        if fir and not with_conv:
            self.register_buffer("fir_kernel", fir_filter(fir_kernel), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.fir:
            if self.conv is not None:
                return self.conv(x)
            return upsample_2d(x, self.fir_kernel) if self.up else downsample_2d(x, self.fir_kernel)
        if self.up:
            x = F.interpolate(x, scale_factor=2.0)
            return self.conv(x) if self.conv is not None else x
        if self.conv is not None:
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, 2)


class Combine(nn.Module):
    """Merge the input pyramid into the feature map: 1x1 conv, then sum or concatenation."""

    def __init__(self, in_ch: int, out_ch: int, method: str) -> None:
        super().__init__()
        self.conv = conv2d(in_ch, out_ch, kernel_size=1)
        self.method = method
        self.official_names = {"conv": "Conv_0"}

    def forward(self, pyramid: Tensor, h: Tensor) -> Tensor:
        p = self.conv(pyramid)
        return torch.cat([p, h], dim=1) if self.method == "cat" else p + h
