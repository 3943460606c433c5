"""NCSN++ and DDPM++ (Song et al. 2021, appendix H): one configurable network and its presets.

Both architectures are the same U-Net with different knobs (the official code also builds DDPM++
with its ``NCSNpp`` class): DDPM++ uses BigGAN residual blocks, no FIR filters, no progressive
growing and positional time embeddings; NCSN++ adds the FIR filter, a progressive input pyramid and
Gaussian Fourier features of log sigma. The presets reproduce the official parameter counts.

The module tree is ours (levels, named sub-blocks, 1x1 convolutions instead of the official
``NIN`` matrices, attention through ``scaled_dot_product_attention``), but every layer is created
in the order of the official flat ``all_modules`` list and remembered in ``official_order``, so
:func:`to_official_state_dict` / :func:`from_official_state_dict` map weights both ways.

Call signature: ``net(x, cond)`` with ``cond`` = ``sde.network_condition(t)``: sigma(t) for VE
(Fourier features of log sigma), (N - 1) t for VP / sub-VP (positional embedding).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_score.nets.fir import FIRConv2d, downsample_2d, fir_filter, upsample_2d
from lightning_score.sde import SDE, VESDE

_INV_SQRT2 = 1.0 / math.sqrt(2.0)


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
    """Random Fourier features of log sigma, [sin(2 pi W log sigma), cos(...)] (Tancik et al. 2020).

    ``W`` is a frozen parameter (not a buffer) as in the official model, so parameter counts and
    state-dict keys match; it never trains.
    """

    def __init__(self, size: int, scale: float) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(size) * scale, requires_grad=False)

    def forward(self, sigma: Tensor) -> Tensor:
        # Same operation order as the official code, so converted checkpoints agree bit for bit.
        # At least float32: sin/cos of arguments in the hundreds are meaningless in bf16.
        dtype = torch.promote_types(sigma.dtype, torch.float32)
        proj = torch.log(sigma.to(dtype))[:, None] * self.W.to(dtype)[None, :] * 2 * math.pi
        return torch.cat([proj.sin(), proj.cos()], dim=1)


def positional_embedding(timesteps: Tensor, dim: int, max_positions: int = 10000) -> Tensor:
    """Transformer sinusoidal embedding of the (continuous) DDPM timestep (Ho et al. 2020)."""
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
        return (x + h) * _INV_SQRT2 if self.skip_rescale else x + h


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
        return (x + h) * _INV_SQRT2 if self.skip_rescale else x + h


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


# -- configuration ---------------------------------------------------------------------------
RESBLOCK_TYPES = ("ddpm", "biggan")
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
COMBINE = ("sum", "cat")
EMBEDDINGS = ("fourier", "positional")


@dataclass(frozen=True)
class NCSNppConfig:
    """The official model knobs (score_sde_pytorch's ``config.model``), NCSN++ CIFAR-10 defaults.

    ``center_input``: map [0, 1] inputs to [-1, 1] inside the network (the official
    ``not data.centered``); None takes it from the SDE (VE data is in [0, 1]).
    ``scale_by_sigma``: divide the output by sigma (VE only), so the network outputs the score;
    without it a VE network predicts sigma * score and ``ScoreModel`` divides by sigma.
    """

    nf: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    conditional: bool = True
    fir: bool = True
    fir_kernel: tuple[float, ...] = (1, 3, 3, 1)
    skip_rescale: bool = True
    resblock_type: str = "biggan"
    progressive: str = "none"
    progressive_input: str = "residual"
    progressive_combine: str = "sum"
    embedding_type: str = "fourier"
    fourier_scale: float = 16.0
    init_scale: float = 0.0
    scale_by_sigma: bool = True
    center_input: bool | None = None

    def __post_init__(self) -> None:
        for name in ("ch_mult", "attn_resolutions", "fir_kernel"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        choices = {
            "resblock_type": RESBLOCK_TYPES,
            "progressive": PROGRESSIVE,
            "progressive_input": PROGRESSIVE_INPUT,
            "progressive_combine": COMBINE,
            "embedding_type": EMBEDDINGS,
        }
        for name, valid in choices.items():
            value = getattr(self, name).lower()
            if value not in valid:
                raise ValueError(f"model.kwargs.{name}='{value}' is not one of {list(valid)}")
            object.__setattr__(self, name, value)
        if self.nf < 4 or not self.ch_mult or self.num_res_blocks < 1:
            raise ValueError("NCSN++ needs nf >= 4, a non-empty ch_mult and num_res_blocks >= 1")


PRESETS: dict[str, NCSNppConfig] = {}
"""Named presets. Parameter counts at 3x32x32 (CIFAR-10) and 3x256x256 match the official models."""

_NCSNPP = NCSNppConfig()
_DDPMPP = dataclasses.replace(
    _NCSNPP,
    fir=False,
    progressive_input="none",
    embedding_type="positional",
    scale_by_sigma=False,
)
PRESETS["ncsnpp_cifar10"] = _NCSNPP  # 62,758,915 parameters
PRESETS["ncsnpp_cifar10_deep"] = dataclasses.replace(_NCSNPP, num_res_blocks=8)  # 107,587,075
PRESETS["ddpmpp_cifar10"] = _DDPMPP  # 61,804,419
PRESETS["ddpmpp_cifar10_deep"] = dataclasses.replace(_DDPMPP, num_res_blocks=8)  # 106,632,579
# CelebA-64: the CIFAR-10 NCSN++ knobs at 64 px (configs/ve/celeba_ncsnpp.py), continuous-time
# Fourier conditioning as in the paper's VE models.
PRESETS["ncsnpp_celeba64"] = _NCSNPP
# LSUN / CelebA-HQ / FFHQ at 256 px: 65,574,549 parameters.
PRESETS["ncsnpp_256"] = dataclasses.replace(
    _NCSNPP,
    ch_mult=(1, 1, 2, 2, 2, 2, 2),
    num_res_blocks=2,
    dropout=0.0,
    progressive="output_skip",
    progressive_input="input_skip",
)
# Tiny versions of the same code for CPU tests and the quickstart (16x16 inputs).
PRESETS["ncsnpp_tiny"] = dataclasses.replace(
    _NCSNPP, nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0
)
PRESETS["ddpmpp_tiny"] = dataclasses.replace(
    _DDPMPP, nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0
)


# -- the network -----------------------------------------------------------------------------
class NCSNpp(nn.Module):
    """The NCSN++ / DDPM++ U-Net, ``net(x, cond) -> Tensor`` (appendix H of Song et al. 2021).

    ``output_divided_by_sigma`` is ``scale_by_sigma``: the score wrapper then takes the output as
    the score instead of dividing by sigma again.
    """

    def __init__(
        self, cfg: NCSNppConfig, in_channels: int, resolution: int, center_input: bool
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.center_input = center_input
        self.output_divided_by_sigma = cfg.scale_by_sigma
        self.num_levels = len(cfg.ch_mult)
        # The layers of the official flat ``all_modules`` list, in its order (see official_key_map).
        self.official_order: list[nn.Module] = []
        order = self.official_order.append
        nf = cfg.nf
        temb_dim = 4 * nf
        fir_kernel = cfg.fir_kernel

        def resblock(
            in_ch: int, out_ch: int | None = None, up: bool = False, down: bool = False
        ) -> ResBlock:
            block = ResBlock(
                cfg.resblock_type, in_ch, out_ch, temb_dim, cfg.dropout, cfg.skip_rescale,
                cfg.init_scale, up=up, down=down, fir=cfg.fir, fir_kernel=fir_kernel,
            )  # fmt: skip
            order(block)
            return block

        def attn(ch: int) -> AttnBlock:
            block = AttnBlock(ch, cfg.skip_rescale, cfg.init_scale)
            order(block)
            return block

        def resample(
            in_ch: int, up: bool, out_ch: int | None = None, with_conv: bool | None = None
        ) -> nn.Module:
            """Level transition: a resampling ResBlock (BigGAN) or a Resample layer (DDPM)."""
            if with_conv is None and cfg.resblock_type == "biggan":
                return resblock(in_ch, up=up, down=not up)
            conv = cfg.resamp_with_conv if with_conv is None else with_conv
            layer = Resample(
                in_ch, out_ch, up=up, with_conv=conv, fir=cfg.fir, fir_kernel=fir_kernel
            )
            order(layer)  # the official list holds it even when it has no weights
            return layer

        def pyramid_resample(ch: int, up: bool) -> Resample:
            """Weightless FIR / nearest / average resampling of the image pyramid."""
            return Resample(ch, None, up=up, with_conv=False, fir=cfg.fir, fir_kernel=fir_kernel)

        def norm_conv(in_ch: int, out_ch: int, init_scale: float) -> nn.Sequential:
            """GroupNorm -> SiLU -> 3x3 conv; two official slots (the norm and the conv)."""
            norm, conv = group_norm(in_ch), conv2d(in_ch, out_ch, init_scale=init_scale)
            order(norm)
            order(conv)
            return nn.Sequential(norm, nn.SiLU(), conv)

        # Noise-level embedding and its MLP (slots 0-2 of the official list).
        self.embed: FourierEmbedding | None = None
        embed_dim = nf
        if cfg.embedding_type == "fourier":
            self.embed = FourierEmbedding(nf, cfg.fourier_scale)
            order(self.embed)
            embed_dim = 2 * nf
        self.temb_mlp: nn.Sequential | None = None
        if cfg.conditional:
            self.temb_mlp = nn.Sequential(
                linear(embed_dim, temb_dim), nn.SiLU(), linear(temb_dim, temb_dim)
            )
            order(self.temb_mlp[0])
            order(self.temb_mlp[2])

        self.conv_in = conv2d(in_channels, nf)
        order(self.conv_in)

        # Down path: res blocks (+ attention) per level, then a transition that may merge the
        # input pyramid (progressive_input, appendix H: "input skip" / "residual").
        resolutions = [resolution // 2**i for i in range(self.num_levels)]
        self.attn_levels = [r in cfg.attn_resolutions for r in resolutions]
        self.down = nn.ModuleList()
        skip_channels = [nf]
        ch, pyramid_ch = nf, in_channels
        for i, mult in enumerate(cfg.ch_mult):
            level = nn.Module()
            level.blocks = nn.ModuleList()
            level.attns = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.blocks.append(resblock(ch, nf * mult))
                ch = nf * mult
                if self.attn_levels[i]:
                    level.attns.append(attn(ch))
                skip_channels.append(ch)
            if i != self.num_levels - 1:
                level.downsample = resample(ch, up=False)
                if cfg.progressive_input == "input_skip":
                    level.pyramid_down = pyramid_resample(pyramid_ch, up=False)
                    level.combine = Combine(pyramid_ch, ch, cfg.progressive_combine)
                    order(level.combine)
                    if cfg.progressive_combine == "cat":
                        ch *= 2
                elif cfg.progressive_input == "residual":
                    level.pyramid_down = resample(pyramid_ch, up=False, out_ch=ch, with_conv=True)
                    pyramid_ch = ch
                skip_channels.append(ch)
            self.down.append(level)

        self.mid = nn.ModuleList([resblock(ch), attn(ch), resblock(ch)])

        # Up path: num_res_blocks + 1 blocks per level eat the skips; one attention per level;
        # then the output pyramid (progressive: "output skip" / "residual") and the transition.
        self.up = nn.ModuleList()
        pyramid_ch = 0
        for i in reversed(range(self.num_levels)):
            level = nn.Module()
            level.blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                level.blocks.append(resblock(ch + skip_channels.pop(), nf * cfg.ch_mult[i]))
                ch = nf * cfg.ch_mult[i]
            if self.attn_levels[i]:
                level.attn = attn(ch)
            top = i == self.num_levels - 1
            if cfg.progressive == "output_skip":
                if not top:
                    level.pyramid_up = pyramid_resample(in_channels, up=True)
                level.pyramid_out = norm_conv(ch, in_channels, cfg.init_scale)
            elif cfg.progressive == "residual":
                if top:
                    level.pyramid_out = norm_conv(ch, ch, 1.0)
                else:
                    level.pyramid_up = resample(pyramid_ch, up=True, out_ch=ch, with_conv=True)
                pyramid_ch = ch
            if i != 0:
                level.upsample = resample(ch, up=True)
            self.up.append(level)
        if skip_channels:
            raise RuntimeError("internal error: unused skip connections")

        self.out: nn.Sequential | None = None
        if cfg.progressive != "output_skip":
            self.out = norm_conv(ch, in_channels, cfg.init_scale)

    @staticmethod
    def _transition(layer: nn.Module, h: Tensor, temb: Tensor | None) -> Tensor:
        return layer(h, temb) if isinstance(layer, ResBlock) else layer(h)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        cfg = self.cfg
        # VE: cond is sigma (Fourier features of log sigma); VP: the DDPM timestep (N - 1) t.
        emb = self.embed(cond) if self.embed is not None else positional_embedding(cond, cfg.nf)
        temb = None
        if self.temb_mlp is not None:
            temb = self.temb_mlp(emb.to(self.temb_mlp[0].weight.dtype))
        if self.center_input:
            x = 2 * x - 1

        pyramid = x
        h = self.conv_in(x)
        skips = [h]
        for i, level in enumerate(self.down):
            for j, block in enumerate(level.blocks):
                h = block(h, temb)
                if self.attn_levels[i]:
                    h = level.attns[j](h)
                skips.append(h)
            if i != self.num_levels - 1:
                h = self._transition(level.downsample, h, temb)
                if cfg.progressive_input == "input_skip":
                    pyramid = level.pyramid_down(pyramid)
                    h = level.combine(pyramid, h)
                elif cfg.progressive_input == "residual":
                    pyramid = level.pyramid_down(pyramid)
                    pyramid = (pyramid + h) * _INV_SQRT2 if cfg.skip_rescale else pyramid + h
                    h = pyramid
                skips.append(h)

        h = self.mid[0](skips[-1], temb)
        h = self.mid[1](h)
        h = self.mid[2](h, temb)

        pyramid = None
        for level in self.up:
            for block in level.blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), temb)
            if hasattr(level, "attn"):
                h = level.attn(h)
            if cfg.progressive == "output_skip":
                out = level.pyramid_out(h)
                pyramid = out if pyramid is None else level.pyramid_up(pyramid) + out
            elif cfg.progressive == "residual":
                if pyramid is None:
                    pyramid = level.pyramid_out(h)
                else:
                    pyramid = level.pyramid_up(pyramid)
                    pyramid = (pyramid + h) * _INV_SQRT2 if cfg.skip_rescale else pyramid + h
                    h = pyramid
            if hasattr(level, "upsample"):
                h = self._transition(level.upsample, h, temb)

        h = pyramid if self.out is None else self.out(h)
        if cfg.scale_by_sigma:
            h = h / cond.to(h.dtype).reshape(-1, *([1] * (h.dim() - 1)))
        return h


# -- factories -------------------------------------------------------------------------------
def build_ncsnpp(preset: str, data_shape: Sequence[int], sde: SDE, **overrides: Any) -> NCSNpp:
    """Build ``preset`` for images of ``data_shape`` (C, H, W); ``overrides`` replace its knobs."""
    if preset not in PRESETS:
        raise ValueError(
            f"unknown NCSN++ preset '{preset}'; valid presets: {', '.join(sorted(PRESETS))}"
        )
    knobs = [f.name for f in dataclasses.fields(NCSNppConfig)]
    unknown = sorted(set(overrides) - set(knobs))
    if unknown:
        raise ValueError(
            f"model.kwargs has unknown keys {unknown} for network '{preset}'; accepted: {knobs}"
        )
    cfg = dataclasses.replace(PRESETS[preset], **overrides)
    if len(data_shape) != 3:
        raise ValueError(
            f"NCSN++ needs image data of shape (C, H, W), got data_shape={tuple(data_shape)}"
        )
    c, height, width = data_shape
    levels = len(cfg.ch_mult)
    if height != width or height % 2 ** (levels - 1):
        raise ValueError(
            f"NCSN++ needs square images with a side divisible by 2^(len(ch_mult) - 1) = "
            f"{2 ** (levels - 1)}, got {height}x{width}"
        )
    if cfg.scale_by_sigma and not isinstance(sde, VESDE):
        raise ValueError(
            f"scale_by_sigma divides the output by sigma, which only VE networks receive; "
            f"set model.kwargs.scale_by_sigma=false for {type(sde).__name__}"
        )
    center = (not sde.centered) if cfg.center_input is None else cfg.center_input
    return NCSNpp(cfg, c, height, center)


def _preset_factory(preset: str) -> Callable[..., NCSNpp]:
    def factory(data_shape: Sequence[int], sde: SDE, **overrides: Any) -> NCSNpp:
        return build_ncsnpp(preset, data_shape, sde, **overrides)

    factory.__name__ = factory.__qualname__ = preset
    factory.__doc__ = f"NCSN++ family preset '{preset}'; keyword arguments override its knobs."
    # An explicit signature lets the registry check config keys against the real knob names.
    fixed = [
        inspect.Parameter("data_shape", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("sde", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    ]
    knobs = [
        inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=getattr(PRESETS[preset], f.name)
        )
        for f in dataclasses.fields(NCSNppConfig)
    ]
    factory.__signature__ = inspect.Signature(fixed + knobs)  # type: ignore[attr-defined]
    return factory


NCSNPP_FACTORIES: dict[str, Callable[..., NCSNpp]] = {
    name: _preset_factory(name) for name in PRESETS
}


# -- official state-dict layout --------------------------------------------------------------
def official_key_map(net: NCSNpp) -> dict[str, tuple[str, bool]]:
    """Our state-dict key -> (official key without ``module.``, whether it is a NIN weight/bias).

    Blocks whose children are named differently from the official ones carry
    ``official_names`` (our child -> official child) and ``official_nin`` (children that are
    official ``NIN`` layers: an (in, out) matrix ``W`` and a bias ``b``, held here as 1x1
    convolutions). Keys come out in the official registration order (``model.parameters()``).
    """
    paths = {id(m): name for name, m in net.named_modules()}
    mapping: dict[str, tuple[str, bool]] = {}
    for slot, module in enumerate(net.official_order):
        ours = paths[id(module)]
        names = getattr(module, "official_names", {})
        nin = getattr(module, "official_nin", set())
        for local in module.state_dict():
            child, _, param = local.rpartition(".")
            if child in nin:
                official = f"{names[child]}.{'W' if param == 'weight' else 'b'}"
            elif child:
                official = f"{names.get(child, child)}.{param}"
            else:
                official = param
            mapping[f"{ours}.{local}"] = (f"all_modules.{slot}.{official}", child in nin)
    return mapping


def to_official_state_dict(net: NCSNpp, prefix: str = "module.") -> dict[str, Tensor]:
    """Our weights in score_sde_pytorch's layout (``prefix`` is DataParallel's ``module.``)."""
    ours = net.state_dict()
    out: dict[str, Tensor] = {}
    for key, (official, nin) in official_key_map(net).items():
        value = ours[key]
        if nin and value.dim() == 4:  # 1x1 conv weight (out, in, 1, 1) -> NIN W (in, out)
            value = value[:, :, 0, 0].t().contiguous()
        out[prefix + official] = value
    return out


def from_official_state_dict(net: NCSNpp, official: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map an official ``model`` state dict (with or without ``module.``) onto ``net``'s keys.

    Raises a ValueError that lists missing, unexpected and wrongly shaped keys, so a checkpoint
    built for another config fails with the keys that differ.
    """
    stripped = {k.removeprefix("module."): v for k, v in official.items()}
    stripped.pop("sigmas", None)  # the official SMLD noise table buffer; our SDE owns the schedule
    ours = net.state_dict()
    result: dict[str, Tensor] = {}
    missing, mismatched = [], []
    for key, (off_key, nin) in official_key_map(net).items():
        if off_key not in stripped:
            missing.append(off_key)
            continue
        value = stripped.pop(off_key)
        if nin and value.dim() == 2:
            value = value.t()[:, :, None, None]
        if tuple(value.shape) != tuple(ours[key].shape):
            expected = tuple(ours[key].shape)
            if nin and len(expected) == 4:
                expected = (expected[1], expected[0])
                got = tuple(value.shape[:2][::-1])
            else:
                got = tuple(value.shape)
            mismatched.append(f"{off_key}: checkpoint {got} vs model {expected}")
            continue
        result[key] = value.to(ours[key].dtype)
    unexpected = sorted(stripped)
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches: " + "; ".join(mismatched[:20]))
        if missing:
            parts.append(f"{len(missing)} keys missing from the checkpoint: {missing[:20]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys in the checkpoint: {unexpected[:20]}")
        raise ValueError(
            "the checkpoint does not fit this network configuration (wrong preset or overrides?): "
            + " | ".join(parts)
        )
    return result
