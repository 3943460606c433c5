"""NCSN++ and DDPM++ (Song et al. 2021, appendix H): one configurable network and its presets.

Both architectures are the same U-Net with different knobs (the official code also builds DDPM++
with its ``NCSNpp`` class): DDPM++ uses BigGAN residual blocks, no FIR filters and no progressive
growing; NCSN++ adds the FIR filter and a progressive input pyramid. The presets reproduce the
official parameter counts.

The module tree is ours (levels, named sub-blocks, 1x1 convolutions instead of the official
``NIN`` matrices, attention through ``scaled_dot_product_attention``), but every layer is created
in the order of the official flat ``all_modules`` list and remembered in ``official_order``, so
``nets/official_layout.py`` maps weights both ways.

Call signature: ``net(x, c_noise) -> F``, the raw output; the parameterization gives ``c_noise``
(ln sigma for Song's VE row, embedded with Fourier features; the DDPM timestep (N - 1) t for VP,
positional) and turns F into a score. A class-conditional network (``num_classes > 0``, not part
of the paper's models) is called ``net(x, c_noise, labels)``: a learned embedding of the label
(``num_classes`` itself is the "no class" label of classifier-free guidance) is added to the
noise embedding before its MLP.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_score.nets.layers import (
    INV_SQRT2,
    AttnBlock,
    Combine,
    FourierEmbedding,
    Resample,
    ResBlock,
    conv2d,
    group_norm,
    linear,
    positional_embedding,
)
from lightning_score.parameterization import Parameterization

# -- configuration ---------------------------------------------------------------------------
RESBLOCK_TYPES = ("ddpm", "biggan")
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
COMBINE = ("sum", "cat")
EMBEDDINGS = ("auto", "fourier", "positional")


@dataclass(frozen=True)
class NCSNppConfig:
    """The official model knobs (score_sde_pytorch's ``config.model``), NCSN++ CIFAR-10 defaults.

    ``center_input``: map [0, 1] inputs to [-1, 1] inside the network (the official
    ``not data.centered``); None takes it from the SDE (VE data is in [0, 1]).
    ``embedding_type``: how ``c_noise`` is embedded; ``auto`` takes the parameterization's choice
    (Fourier for Song's VE row, positional for VP and EDM), which is what the official VE and VP
    configs of NCSN++ and DDPM++ use.
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
    embedding_type: str = "auto"
    fourier_scale: float = 16.0
    init_scale: float = 0.0
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
    """The NCSN++ / DDPM++ U-Net, ``net(x, c_noise) -> F`` (appendix H of Song et al. 2021).

    ``embedding`` is the resolved embedding type (``fourier`` or ``positional``).
    """

    def __init__(
        self,
        cfg: NCSNppConfig,
        in_channels: int,
        resolution: int,
        center_input: bool,
        embedding: str,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.center_input = center_input
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
        if embedding == "fourier":
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
        # Not in the official list: the official models have no labels.
        self.label_embed: nn.Embedding | None = None
        if num_classes:
            if self.temb_mlp is None:
                raise ValueError(
                    "a class-conditional NCSN++ adds the label to the noise embedding, which "
                    "needs model.kwargs.conditional=true"
                )
            self.label_embed = nn.Embedding(num_classes + 1, embed_dim)

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

    def forward(self, x: Tensor, c_noise: Tensor, labels: Tensor | None = None) -> Tensor:
        cfg = self.cfg
        emb = (
            self.embed(c_noise) if self.embed is not None else positional_embedding(c_noise, cfg.nf)
        )
        if self.label_embed is not None:
            emb = emb + self.label_embed(labels)
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
                    pyramid = (pyramid + h) * INV_SQRT2 if cfg.skip_rescale else pyramid + h
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
                    pyramid = (pyramid + h) * INV_SQRT2 if cfg.skip_rescale else pyramid + h
                    h = pyramid
            if hasattr(level, "upsample"):
                h = self._transition(level.upsample, h, temb)

        return pyramid if self.out is None else self.out(h)


# -- factories -------------------------------------------------------------------------------
def build_ncsnpp(
    preset: str,
    data_shape: Sequence[int],
    param: Parameterization,
    num_classes: int = 0,
    **overrides: Any,
) -> NCSNpp:
    """Build ``preset`` for images of ``data_shape`` (C, H, W) trained under ``param``;
    ``overrides`` replace its knobs; ``num_classes > 0`` adds a label embedding."""
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
    embedding = param.embedding if cfg.embedding_type == "auto" else cfg.embedding_type
    if embedding not in ("fourier", "positional"):
        raise ValueError(
            f"parameterization '{param.name}' has no noise embedding for a network; "
            "set model.kwargs.embedding_type=fourier or positional"
        )
    center = (not param.sde.centered) if cfg.center_input is None else cfg.center_input
    return NCSNpp(cfg, c, height, center, embedding, num_classes)


def _preset_factory(preset: str) -> Callable[..., NCSNpp]:
    def factory(
        data_shape: Sequence[int], param: Parameterization, num_classes: int = 0, **overrides: Any
    ) -> NCSNpp:
        return build_ncsnpp(preset, data_shape, param, num_classes, **overrides)

    factory.__name__ = factory.__qualname__ = preset
    factory.__doc__ = f"NCSN++ family preset '{preset}'; keyword arguments override its knobs."
    # An explicit signature lets the registry check config keys against the real knob names.
    fixed = [
        inspect.Parameter("data_shape", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("param", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("num_classes", inspect.Parameter.KEYWORD_ONLY, default=0),
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
